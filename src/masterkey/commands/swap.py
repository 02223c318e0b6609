"""masterkey swap --weights FILE --keys KEYS --data PATH"""

from __future__ import annotations

import argparse
from typing import Any

from masterkey.commands._common import (
    BATCH,
    IMAGES,
    MAX_BATCH,
    SEED,
    SEEDS,
    add_data_mode_arguments,
    device_arg,
    int_arg,
    note_written,
    output_arg,
    parse_kwargs,
    print_json,
    progress_enabled,
    resolved_device,
)
from masterkey.errors import MasterkeyError, option

NAME = "swap"
ORDER = 6
HELP = "swap keys into a pretrained network (every depthwise filter -> a * key + b) and measure its accuracy"
DESCRIPTION = """Replace every depthwise filter of a pretrained network by its best affine fit a * key + b from a key
set, with no fine-tuning, and report top-1 / top-5 before and after, the mean cos² (explained fraction of each
centred filter) overall and per stage: the paper's Table 1, for any DS-CNN. Several --keys give a sweep;
'random:K' with --seeds N runs N random key sets and reports mean ± 95% CI. BatchNorm networks (MobileNet,
EfficientNet) can re-estimate their running statistics after each swap on N training images (--recalibrate N
--calib-data DIR: the default to quote, it never sees the evaluation set) or cross-fitted on the evaluation set
(--recalibrate N --crossfit K: each of K folds is classified after recalibrating on N images of the others; no image
calibrates the model that classifies it, but the statistics come from the evaluation distribution, and every row
says so); every key set is then reported with and without it, and the unswapped model recalibrated shows what the
calibration images alone do (images unlike the evaluation set, e.g. upscaled 128 px Imagenette for ImageNet, hurt).
--sensitivity swaps one stage or layer at a time and reports each one's accuracy drop. Accuracies are in percent,
differences in percentage points. A model trained by masterkey train is evaluated with the image size and
normalisation its weights record. --save-weights FILE.safetensors writes the swapped (and, with
--calib-data, recalibrated) network of a single key set as a plain state_dict of the original timm / torchvision
architecture; --onnx FILE exports it as an ONNX graph, checked with onnxruntime against PyTorch on evaluation images.

KEYS: a built-in (paper8, random:K[:SEED], impulse, scalespace8), a key file (.safetensors / text), a discover run
directory (its keys, per kernel size) or DIR:METHOD (its baseline_keys/METHOD.safetensors, e.g. DIR:kmeans).
Keys of another kernel size are used only with --resize-keys (centre crop / zero pad: a crop is not a re-fit).

examples:
  masterkey swap --weights ../shared/models/cifar10-convnext/convnext_atto_s2_e55.safetensors \\
      --keys paper8 --keys random:8 --seeds 3 --data ../shared/data/cifar10/test --json
  masterkey swap --model torchvision:mobilenet_v2 --weights ../shared/models/mobilenet_v2_imagenet.pth \\
      --keys paper8 --resize-keys --data ../shared/data/imagenet-samples/val \\
      --recalibrate 250 --calib-data ../shared/data/imagenette-128/train -o runs/swap-mnv2
  masterkey swap --weights ../shared/models/efficientnet_lite0_imagenet.pth --keys paper8 --resize-keys \\
      --data ../shared/data/imagenet-samples/val --sensitivity stage
  masterkey swap --weights W.safetensors --keys runs/discover --keys runs/discover:kmeans --data DIR
  masterkey swap --weights ../shared/models/cifar10-convnext/convnext_atto_s2_e55.safetensors --keys paper8 \\
      --data ../shared/data/cifar10/test --save-weights runs/atto-paper8.safetensors --onnx runs/atto-paper8.onnx
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME", help="timm or torchvision name (default: from the weights)")
    p.add_argument("--weights", metavar="FILE", help="state_dict / safetensors file of the pretrained model")
    p.add_argument("--pretrained", action="store_true", help="hub weights instead of --weights (needs the network)")
    p.add_argument("--model-kwargs", metavar="K=V,...", help="extra model arguments, e.g. num_classes=10")
    p.add_argument(
        "--keys", action="append", required=True, metavar="KEYS", help="key set to swap in; repeat for a sweep"
    )
    p.add_argument("--seeds", type=SEEDS, default=1, help="random:K without a seed runs seeds 0..N-1 (default 1)")
    p.add_argument("--data", required=True, metavar="PATH", help="evaluation ImageFolder (e.g. cifar10/test)")
    p.add_argument(
        "--preprocessing",
        default="auto",
        choices=["auto", "cifar10", "imagenet"],
        help="auto: the model's own (timm data config / torchvision; CIFAR recipe when the weights say cifar)",
    )
    p.add_argument("--max-per-class", type=IMAGES, metavar="N", help="evaluate on the first N images of each class")
    p.add_argument(
        "--max-images", type=IMAGES, metavar="N", help="evaluate on N images (class-stratified random subset)"
    )
    p.add_argument("--recalibrate", type=IMAGES, metavar="N", help="re-estimate BatchNorm statistics on N images")
    p.add_argument(
        "--calib-data",
        metavar="PATH",
        help="training images for --recalibrate (ImageFolder or tar shards; not the eval set)",
    )
    p.add_argument(
        "--crossfit",
        type=int_arg(2, 100),
        metavar="K",
        help="instead of --calib-data: K folds of the eval set, each classified after recalibrating on N images of "
        "the other folds (no image calibrates the model that classifies it, but it uses the evaluation distribution)",
    )
    p.add_argument("--calib-seed", type=SEED, default=0, help="seed choosing the calibration images")
    p.add_argument("--sensitivity", choices=["stage", "layer"], help="swap one stage / layer at a time (first KEYS)")
    p.add_argument("--layers", metavar="PATTERN", help="swap only these layers: globs / names / stage:S[-T], comma-sep")
    p.add_argument("--resize-keys", action="store_true", help="centre-crop / zero-pad keys to other kernel sizes")
    p.add_argument("--batch-size", type=BATCH, default=128, help="evaluation batch size (default 128)")
    p.add_argument(
        "--calib-batch-size", type=int_arg(2, MAX_BATCH), default=64, help="recalibration batch size (default 64)"
    )
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda, cuda:N or auto")
    add_data_mode_arguments(p)
    p.add_argument("-o", "--out", type=output_arg, metavar="DIR", help="write a swap run directory")
    p.add_argument(
        "--save-weights",
        type=output_arg,
        metavar="FILE",
        help="write the swapped (recalibrated with --calib-data) network as a plain state_dict (.safetensors)",
    )
    p.add_argument("--onnx", type=output_arg, metavar="FILE", help="export the swapped network as an ONNX graph")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from masterkey.data.preprocessing import preprocessing_named
    from masterkey.data.selection import calibration_images, load_eval_images
    from masterkey.files import check_output
    from masterkey.networks.recalibrate import has_batchnorm
    from masterkey.swap import Calibration, SwapSession, check_keys, expand_seeds, load_model, write_swap_run
    from masterkey.swap.save import check_save_targets, network_metadata, save_swapped

    if args.recalibrate is not None and not (args.calib_data or args.crossfit):
        raise MasterkeyError(
            "--recalibrate needs --calib-data (a training ImageFolder, never the evaluation set) or --crossfit K"
        )
    if args.calib_data and args.crossfit:
        raise MasterkeyError("--calib-data and --crossfit exclude each other: pick one source of calibration images")
    if (args.calib_data or args.crossfit) and args.recalibrate is None:
        raise MasterkeyError("--calib-data / --crossfit are only used with --recalibrate N")
    inputs = [args.weights, args.data, args.calib_data, *args.keys]
    if args.out:
        check_output(args.out, "swap", overwrite=args.overwrite, inputs=inputs)
    specs = expand_seeds(args.keys, args.seeds)
    check_save_targets(args.save_weights, args.onnx, specs, args.crossfit, args.overwrite, [*inputs, args.out])
    kwargs = parse_kwargs(args.model_kwargs)
    model, name, metadata = load_model(args.model, args.weights, pretrained=args.pretrained, **kwargs)
    prep = preprocessing_named(args.preprocessing, model, metadata)
    if args.recalibrate is not None and not has_batchnorm(model):
        raise MasterkeyError(
            f"--recalibrate: {name} has no BatchNorm layer (LayerNorm networks such as ConvNeXt keep no running "
            "statistics); drop --recalibrate"
        )
    check_keys(model, specs, args.layers, args.resize_keys)
    if args.sensitivity:
        check_keys(model, specs[:1], None, args.resize_keys)
    data = {"data_mode": args.data_mode, "memory_budget": args.memory_budget, "workers": args.workers}
    progress = progress_enabled(args)
    hint = f"give {option('preprocessing', 'imagenet')} (or another that crops) to make them one size"
    images = load_eval_images(
        args.data,
        prep,
        max_per_class=args.max_per_class,
        max_images=args.max_images,
        progress=progress,
        size_hint=hint,
        **data,
    )
    calibration = None
    if args.recalibrate is not None and args.calib_data:
        calibration = Calibration(
            images=calibration_images(
                args.calib_data,
                prep,
                args.recalibrate,
                seed=args.calib_seed,
                exclude=args.data,
                progress=progress,
                **data,
            )
        )
    elif args.recalibrate is not None:
        calibration = Calibration(crossfit=args.crossfit, n_images=args.recalibrate, seed=args.calib_seed)
    session = SwapSession(
        model,
        images,
        prep,
        calibration=calibration,
        batch_size=args.batch_size,
        calib_batch_size=args.calib_batch_size,
        device=resolved_device(args.device),
        workers=args.workers,
        progress=progress,
    )
    recal = args.recalibrate is not None
    results = session.sweep(specs, layers=args.layers, resize=args.resize_keys, recalibrate=recal)
    if args.sensitivity:
        results.sensitivity = session.sensitivity(
            specs[0], by=args.sensitivity, resize=args.resize_keys, recalibrate=recal
        )
    results.info.update({"model": name, "weights": args.weights})
    saved = None
    if args.save_weights or args.onnx:
        saved = save_swapped(
            session,
            specs[0],
            weights=args.save_weights,
            onnx=args.onnx,
            layers=args.layers,
            resize=args.resize_keys,
            calibration=calibration if args.calib_data else None,
            metadata=network_metadata(name, metadata, kwargs),
            overwrite=args.overwrite,
            inputs=inputs,
        )
    if args.out:
        write_swap_run(args.out, results, _config(args, name, prep), overwrite=args.overwrite)
    if args.json:
        print_json({**results.to_dict(), **({"saved": saved.to_dict()} if saved else {})})
    else:
        print(results.to_text() + (f"\n\n{saved.render()}" if saved else ""))
    note_written(args.out, args.save_weights, args.onnx)
    return 0


def _config(args: argparse.Namespace, name: str, prep: Any) -> dict[str, Any]:
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    config["model"] = name
    config["resolved_preprocessing"] = prep.to_dict()
    return config
