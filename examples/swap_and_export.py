"""Swap keys into a pretrained CIFAR-10 ConvNeXt, measure what is left, and export the swapped network as plain
weights and ONNX (checked with onnxruntime).

Each depthwise filter is replaced by its best fit a * key + b from the paper's 8 master keys, with no training.

    python examples/swap_and_export.py --weights ../shared/models/cifar10-convnext/convnext_atto_s2_e55.safetensors \
        --data ../shared/data/cifar10/test --out swapped
"""

import argparse

import onnxruntime
import timm
import torch
from safetensors.torch import load_file, save_file
from torchvision import datasets, transforms

import masterkey as mk
import masterkey.nn as mknn

p = argparse.ArgumentParser()
p.add_argument("--weights", default="../shared/models/cifar10-convnext/convnext_atto_s2_e55.safetensors")
p.add_argument("--data", default="../shared/data/cifar10/test")
p.add_argument("--keys", default="paper8")
p.add_argument("--images", type=int, default=1000, help="evaluate on the first N test images")
p.add_argument("--out", default="swapped", help="writes OUT.safetensors and OUT.onnx")
args = p.parse_args()

normalize = transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
test_set = datasets.ImageFolder(args.data, transforms.Compose([transforms.ToTensor(), normalize]))
subset = torch.utils.data.Subset(test_set, torch.randperm(len(test_set), generator=torch.manual_seed(0))[: args.images])
x, y = next(iter(torch.utils.data.DataLoader(subset, batch_size=len(subset))))

model = timm.create_model("convnext_atto", num_classes=10, patch_size=1)
model.load_state_dict(load_file(args.weights))
model.eval()
with torch.no_grad():
    before = 100 * (model(x).argmax(1) == y).float().mean()
    report = mk.swap_depthwise(model, args.keys)  # in place: every depthwise filter -> a * key + b
    after = 100 * (model(x).argmax(1) == y).float().mean()
print(f"{args.keys}: mean cos² {report.mean_cos2:.3f} over {report.n_filters} filters")
print(f"top-1 on {len(y)} images: {before:.2f}% before, {after:.2f}% with keys")

save_file(mknn.export_state_dict(model), f"{args.out}.safetensors")  # loads into a plain timm model, strictly
onnx = mknn.onnx_bytes(model, x[:2])
with open(f"{args.out}.onnx", "wb") as f:
    f.write(onnx)
runtime = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
with torch.no_grad():
    difference = (torch.from_numpy(runtime.run(None, {"images": x[:16].numpy()})[0]) - model(x[:16])).abs().max()
print(f"wrote {args.out}.safetensors and {args.out}.onnx (onnxruntime vs PyTorch: max |Δ logit| {difference:.1e})")
