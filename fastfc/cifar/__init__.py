"""The paper's CIFAR-10 experiment: a ResNet-32 adversarially trained with and without a brick-red
background, and the feature visualisation that shows the background was learned.

``data`` (datasets, the two train transforms, the loader), ``model`` (ResNet-32), ``attack`` (PGD on a
noise-smoothed classifier: the training task), ``visualize`` (feature visualisation, the measures,
the figure), ``config`` (the run and visualisation configs, presets, their resolution; no torch),
``run`` (the ``fastfc cifar`` command line and the work it starts).
"""
