"""masterkey harvest SOURCE... -o BANK"""

from __future__ import annotations

import argparse

from masterkey.commands._common import note_written, output_arg, parse_kwargs, print_json, progress_enabled
from masterkey.commands.bank import print_info
from masterkey.progress import progress_bar

NAME = "harvest"
ORDER = 1
HELP = "collect the depthwise filters of networks into a filter bank"
DESCRIPTION = """Collect depthwise filters (k x k, k > 1, groups == in_channels) into a filter bank directory.

A SOURCE is one of (an interrupted harvest resumes with the sources it had finished):
  FILE.pth / .pt / .bin / .safetensors   a raw state_dict: every tensor shaped [C, 1, k, k] (no model class)
  FILE.onnx                              Conv nodes with group > 1 and a [C, 1, k, k] weight
  NAME                                   a timm or torchvision model (timm:NAME, torchvision:NAME to choose),
                                         with --weights FILE, or NAME@FILE, or --pretrained to use the hub

examples:
  masterkey harvest ../shared/models/mobilenet_v2_imagenet.pth -o banks/mnv2
  masterkey harvest convnext_atto@convnext_atto_s0_e20.safetensors --model-kwargs num_classes=10,patch_size=1 -o b
  masterkey harvest a.pth b.safetensors model.onnx -o banks/all
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="weights files, ONNX files or model names")
    p.add_argument("-o", "--out", type=output_arg, required=True, metavar="BANK", help="bank directory to create")
    p.add_argument("--weights", metavar="FILE", help="local weights for a single model-name SOURCE")
    p.add_argument("--name", help="source name in the bank (single SOURCE; default: file stem or model name)")
    p.add_argument("--model-kwargs", metavar="K=V,...", help="keyword arguments for the model constructor")
    p.add_argument("--pretrained", action="store_true", help="allow downloading weights from the hub (online)")
    p.add_argument("--overwrite", action="store_true", help="replace BANK if it exists")
    p.add_argument("--json", action="store_true", help="print the bank summary as JSON")


def run(args: argparse.Namespace) -> int:
    from masterkey.sources import harvest_bank

    show = progress_enabled(args)
    bank = harvest_bank(
        args.sources,
        args.out,
        weights=args.weights,
        name=args.name,
        model_kwargs=parse_kwargs(args.model_kwargs),
        pretrained=args.pretrained,
        overwrite=args.overwrite,
        progress=lambda items: progress_bar(items, desc="harvest", unit="source", enabled=show),
    )
    if args.json:
        print_json(bank.info())
    else:
        print_info(bank)
    note_written(args.out)
    return 0
