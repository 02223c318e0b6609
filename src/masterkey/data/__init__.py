"""Images, end to end, for every stage: which files, decoded how, held where, selected how, normalised once,
evaluated once.

=====================  ==============================================================================================
module                 what it holds
=====================  ==============================================================================================
``decode``             image files: ImageFolder listing (regular files only), decoding to RGB (decompression-bomb
                       limit), the deterministic geometry (resize, centre crop)
``samples``            what a split holds without pixels: ImageFolder trees, tar shards, timm data sets
``memory``             decoded images held as one uint8 tensor, through the checksummed on-disk cache
``cache``              the cache's folder, entries, marker and description (no torch: ``masterkey cache``)
``stream``             images decoded by DataLoader workers; the one batch loop; memory or stream; worker bounds
``preprocessing``      :class:`Preprocessing` (geometry, mean / std), a model's own, the one normalisation
``selection``          evaluation subsets, calibration images, cross-fitted folds, held-out and training subsets
``evaluate``           the one evaluation: top-1 / top-5 in percent, loss, and the one class check
``training``           training / test splits in memory and their normalisation statistics
``augment``            seeded augmentation: crop / flip / mixup / cutmix on the device, timm transforms in workers
``batches``            training batches in memory or streamed, in an order set by (seed, epoch)
=====================  ==============================================================================================

Swap, discover's accuracy objective, explain and train take their images from here. The names below are looked up
on first use, so importing this package loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from masterkey.lazy import lazy_attributes

_PUBLIC = {
    "IMAGE_SUFFIXES": "masterkey.data.decode",
    "list_image_folder": "masterkey.data.decode",
    "open_rgb": "masterkey.data.decode",
    "decode_image": "masterkey.data.decode",
    "Samples": "masterkey.data.samples",
    "list_samples": "masterkey.data.samples",
    "write_tar_shards": "masterkey.data.samples",
    "ImageSet": "masterkey.data.memory",
    "load_image_folder": "masterkey.data.memory",
    "default_cache_dir": "masterkey.data.cache",
    "StreamedImages": "masterkey.data.stream",
    "Images": "masterkey.data.stream",
    "image_batches": "masterkey.data.stream",
    "choose_data_mode": "masterkey.data.stream",
    "Preprocessing": "masterkey.data.preprocessing",
    "preprocessing_for": "masterkey.data.preprocessing",
    "normalize_images": "masterkey.data.preprocessing",
    "load_eval_images": "masterkey.data.selection",
    "calibration_images": "masterkey.data.selection",
    "crossfit_folds": "masterkey.data.selection",
    "stratified_split": "masterkey.data.selection",
    "evaluate": "masterkey.data.evaluate",
    "predict_logits": "masterkey.data.evaluate",
    "check_class_count": "masterkey.data.evaluate",
    "load_train_data": "masterkey.data.training",
}

if TYPE_CHECKING:
    from masterkey.data.cache import default_cache_dir
    from masterkey.data.decode import IMAGE_SUFFIXES, decode_image, list_image_folder, open_rgb
    from masterkey.data.evaluate import check_class_count, evaluate, predict_logits
    from masterkey.data.memory import ImageSet, load_image_folder
    from masterkey.data.preprocessing import Preprocessing, normalize_images, preprocessing_for
    from masterkey.data.samples import Samples, list_samples, write_tar_shards
    from masterkey.data.selection import calibration_images, crossfit_folds, load_eval_images, stratified_split
    from masterkey.data.stream import Images, StreamedImages, choose_data_mode, image_batches
    from masterkey.data.training import load_train_data

__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSet",
    "Images",
    "Preprocessing",
    "Samples",
    "StreamedImages",
    "calibration_images",
    "check_class_count",
    "choose_data_mode",
    "crossfit_folds",
    "decode_image",
    "default_cache_dir",
    "evaluate",
    "image_batches",
    "list_image_folder",
    "list_samples",
    "load_eval_images",
    "load_image_folder",
    "load_train_data",
    "normalize_images",
    "open_rgb",
    "predict_logits",
    "preprocessing_for",
    "stratified_split",
    "write_tar_shards",
]
