"""Train a timm ConvNeXt on CIFAR-10 with frozen keys, in a plain PyTorch loop, and export a plain timm model.

Every depthwise filter becomes one of the paper's 8 master keys (frozen) plus a learnable offset; everything else
trains as usual. The exported weights load into an unmodified timm model.

    python examples/train_frozen_keys.py --data ../shared/data/cifar10 --epochs 5 --out frozen.safetensors
"""

import argparse

import timm
import torch
from safetensors.torch import save_file
from torchvision import datasets, transforms

import masterkey.nn as mknn

p = argparse.ArgumentParser()
p.add_argument("--data", default="../shared/data/cifar10")
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--per-class", type=int, default=None, help="use only the first N images of each class")
p.add_argument("--out", default="frozen.safetensors")
args = p.parse_args()
torch.manual_seed(0)

normalize = transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
augment = transforms.Compose([transforms.RandomCrop(32, 4), transforms.RandomHorizontalFlip()])
train_set = datasets.ImageFolder(f"{args.data}/train", transforms.Compose([augment, transforms.ToTensor(), normalize]))
test_set = datasets.ImageFolder(f"{args.data}/test", transforms.Compose([transforms.ToTensor(), normalize]))
if args.per_class:  # a small, class-balanced subset
    for ds in (train_set, test_set):
        ds.samples = [s for c in range(10) for s in [x for x in ds.samples if x[1] == c][: args.per_class]]
train = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True)
test = torch.utils.data.DataLoader(test_set, batch_size=256)

model = timm.create_model("convnext_atto", num_classes=10, patch_size=2)
conversion = mknn.convert_to_keys(model, "paper8", mode="frozen")  # in place; the convs stay nn.Conv2d
print(f"keys in {len(conversion.layers)} layers ({conversion.assignment} assignment):", conversion.key_counts)
print("parameters:", mknn.parameter_counts(model))

# No weight decay on the offsets (nor on biases and norms); the keys are buffers and never train.
optimizer = torch.optim.AdamW(mknn.param_groups(model, weight_decay=0.05), lr=2e-3)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=args.epochs * len(train))


def accuracy(net: torch.nn.Module) -> float:
    net.eval()
    with torch.no_grad():
        hits = sum(int((net(x).argmax(1) == y).sum()) for x, y in test)
    return 100 * hits / len(test_set)


for epoch in range(args.epochs):
    model.train()
    for x, y in train:
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test top-1 {accuracy(model):.2f}%")

# A plain state_dict: an unmodified timm model loads it strictly and computes the same.
save_file(mknn.export_state_dict(model), args.out)
plain = timm.create_model("convnext_atto", num_classes=10, patch_size=2)
plain.load_state_dict(mknn.export_state_dict(model), strict=True)
print(f"exported to {args.out}; the plain timm model scores {accuracy(plain):.2f}%")
