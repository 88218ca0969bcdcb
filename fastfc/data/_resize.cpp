// fastfc's crop-and-resize for ffcv's training decoder, called from numba through ctypes.
//
// ffcv 1.0.2's libffcv `resize` always uses cv::INTER_AREA. For the paper's crop (90-100% of an
// image stored with its shorter side just above the output, REFERENCE.md section 5) every resize is
// a small non-integer downscale (ratio about 1.1), where OpenCV's area filter takes its generic
// path: 0.5-0.7 ms per 224 px image on one core, as much as the JPEG decode. Bilinear takes 0.1 ms.
// Below a 2x downscale bilinear skips no source pixel, so it aliases little; at 2x and above
// this falls back to INTER_AREA, exactly as ffcv does.
//
// Same argument order as ffcv's `resize` minus its unused first argument: image rows/cols,
// crop rows [start_row, end_row) and cols [start_col, end_col), output rows/cols; HxWx3 uint8,
// C-contiguous.
#include <cstdint>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

extern "C" __attribute__((visibility("default")))
void fastfc_resize_crop(int64_t source_p, int64_t source_rows, int64_t source_cols,
                        int64_t start_row, int64_t end_row, int64_t start_col, int64_t end_col,
                        int64_t dest_p, int64_t dest_rows, int64_t dest_cols) {
    cv::Mat source(source_rows, source_cols, CV_8UC3, reinterpret_cast<uint8_t *>(source_p));
    cv::Mat dest(dest_rows, dest_cols, CV_8UC3, reinterpret_cast<uint8_t *>(dest_p));
    cv::Mat crop = source.rowRange(start_row, end_row).colRange(start_col, end_col);
    const bool big_downscale = crop.rows >= 2 * dest_rows || crop.cols >= 2 * dest_cols;
    cv::resize(crop, dest, dest.size(), 0, 0, big_downscale ? cv::INTER_AREA : cv::INTER_LINEAR);
}
