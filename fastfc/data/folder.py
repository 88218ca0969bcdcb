"""ImageNet val (or train) read straight from its folder, through the shift sets' evaluation path.

The paper scores ImageNet val exactly as it scores the shift sets (docs/recipe.md): the original
JPEG, shorter side resized to the encoder's input (bicubic), centre crop, normalisation. A folder
laid out as ``<wnid>/*`` (the layout ``python -m data_prep.shifts --set imagenet-val`` converts),
listed by :func:`fastfc.data.source.read_folder` (a :class:`fastfc.data.source.FolderSet`), is
read here with the shard reader's own decode (:func:`fastfc.data.shards.decode_image`) and
transform (:func:`fastfc.data.shards.eval_transform`), so it gives the same embeddings as the
``imagenet-val`` shards written from it. Label = index of the WNID in the 1000 sorted ImageNet
WNIDs, as in every 1000-way set. The probe reads the ImageNet train folder the same way
(:func:`fastfc.probe.train_classes`), as the released code did (``datasets/imagenet.py``,
``ImageNet.populate_train``: ``ImageFolder`` with the evaluation ``preprocess``). Images are
read as stored (the EXIF orientation tag ignored, as ``pil_loader``) and uncropped. Every caller
opens the folder as a source (:meth:`fastfc.data.source.Source.batches`).
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fastfc.data.shards import RawSample, decode_image

_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}  # content format -> member ext


class FolderDataset(Dataset):
    """Rows ``start..stop-1`` of a :class:`fastfc.data.source.FolderSet` (its ``root``, ``files`` and
    ``labels``): ``(transform(rgb), label, row)`` per item.

    Decoding is the shard reader's (:func:`fastfc.data.shards.decode_image`), the member extension
    taken from the file's content as ``data_prep.shifts`` names it.
    """

    def __init__(self, folder, transform, start: int, stop: int):
        self.folder, self.transform, self.start, self.stop = folder, transform, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        row = self.start + i
        rel = self.folder.files[row]
        data = (self.folder.root / rel).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                ext = _EXT.get(im.format, "jpg")
        except Exception:  # undecodable: decode_image raises the named error below
            ext = "jpg"
        img = decode_image(RawSample(rel, str(self.folder.root), ext, data, self.folder.labels[row], {}))
        return self.transform(img), self.folder.labels[row], row


def _collate(batch):
    images, labels, rows = zip(*batch)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), torch.tensor(rows, dtype=torch.int64)


def folder_batches(folder, transform, *, rank: int, world_size: int, batch_size: int,
                   num_workers: int):
    """This rank's contiguous slice of ``folder`` (a :class:`fastfc.data.source.FolderSet`), in set
    order: ``(rows [B] int64, images [B,3,S,S] float32, labels [B] int64)`` per batch; every image
    read exactly once over all ranks."""
    n = len(folder.files)
    start, stop = n * rank // world_size, n * (rank + 1) // world_size
    if start == stop:
        return
    loader = DataLoader(FolderDataset(folder, transform, start, stop), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate, drop_last=False)
    for images, labels, rows in loader:
        yield rows, images, labels
