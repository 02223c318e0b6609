"""Bad input to every command, as a user would give it: each case must exit with status 2 and one line on stderr
naming the problem, print no traceback, leave nothing behind (no output, no temporary or lock file) and leave
every input exactly as it was (sha256 of every file of the workspace before and after).

``{ws}`` is the workspace (see conftest.py), ``{out}`` an output path that must never appear.
"""

from __future__ import annotations

import pytest

from .conftest import assert_clean_failure, run_cli, snapshot

D = "{ws}/damaged"
K = "{ws}/keyfiles"
S = "{ws}/sources"
M = "{ws}/model.safetensors"
DATA = "{ws}/data"
SWAP = ["swap", "--weights", M, "--keys", "paper8", "--data", f"{DATA}/test"]
# A batch that fits the workspace's 20 training images, so that each case meets only its own bad input.
TRAIN = [
    "train", "--model", "convnext_atto", "--model-kwargs", "num_classes=10,patch_size=1", "--data", DATA,
    "--batch-size", "4",
]  # fmt: skip
TRAIN_OUT = [*TRAIN, "-o", "{out}"]
DISC = ["discover", "{ws}/bank", "-o", "{out}"]
EXPLAIN = ["explain", "--images", "camera"]

CASES: list[tuple[str, list[str], str]] = [
    # ------------------------------------------------------------------ the command line itself
    ("cli-unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("cli-unknown-option", ["fit", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ("cli-missing-value", ["fit", "--keys"], "argument --keys: expected one argument"),
    ("cli-missing-action", ["bank"], "the following arguments are required: ACTION"),
    # ------------------------------------------------------------------ harvest
    ("harvest-empty-folder", ["harvest", f"{S}/folder", "-o", "{out}"], "a folder; a SOURCE is a weights file"),
    ("harvest-empty-onnx", ["harvest", f"{S}/empty.onnx", "-o", "{out}"], "not an ONNX model (the file is empty"),
    ("harvest-empty-pth", ["harvest", f"{S}/empty.pth", "-o", "{out}"], "empty.pth: not a readable PyTorch"),
    ("harvest-text-pth", ["harvest", f"{S}/text.pth", "-o", "{out}"], "text.pth: not a readable PyTorch"),
    ("harvest-empty-st", ["harvest", f"{S}/empty.safetensors", "-o", "{out}"], "not a readable safetensors file"),
    ("harvest-no-depthwise", ["harvest", f"{S}/no_depthwise.safetensors", "-o", "{out}"], "no depthwise"),
    ("harvest-missing-file", ["harvest", f"{S}/nothing.pth", "-o", "{out}"], "nothing.pth: no such file"),
    ("harvest-unknown-model", ["harvest", "no_such_net", "-o", "{out}"], "'no_such_net'"),
    ("harvest-weights-folder", ["harvest", f"convnext_atto@{S}/folder", "-o", "{out}"], "a folder, not a weights"),
    ("harvest-name-two-sources", ["harvest", M, M, "--name", "x", "-o", "{out}"], "--weights and --name go with"),
    ("harvest-same-source-twice", ["harvest", M, M, "-o", "{out}"], "are given twice"),
    ("harvest-bad-kwargs", ["harvest", "convnext_atto", "--model-kwargs", "=3", "-o", "{out}"], "key=value pairs"),
    (
        "harvest-second-source-bad",
        ["harvest", M, f"{S}/empty.pth", "-o", "{ws}/new/deeper/bank"],
        "empty.pth: not a readable",
    ),
    (
        "harvest-model-too-big",
        ["harvest", f"convnext_atto@{M}", "--model-kwargs", "num_classes=1000000000", "-o", "{out}"],
        "parameters, more than 2,000,000,000",
    ),
    ("harvest-out-is-input", ["harvest", M, "-o", M, "--overwrite"], "is an input of this command"),
    ("harvest-out-holds-input", ["harvest", M, "-o", "{ws}", "--overwrite"], "holds the input"),
    ("harvest-out-exists", ["harvest", M, "-o", "{ws}/bank"], "already exists (pass --overwrite"),
    ("harvest-out-userdir", ["harvest", M, "-o", "{ws}/userdir", "--overwrite"], "userdir is not a masterkey output"),
    ("harvest-out-other-kind", ["harvest", M, "-o", "{ws}/fit", "--overwrite"], "is a masterkey fit output"),
    ("harvest-out-under-file", ["harvest", M, "-o", "{ws}/notes.txt/bank"], "notes.txt is a file, not a folder"),
    # ------------------------------------------------------------------ bank
    # ------------------------------------------------------------------ cache
    ("cache-no-action", ["cache"], "the following arguments are required: ACTION"),
    ("cache-unknown-action", ["cache", "purge"], "invalid choice: 'purge'"),
    ("cache-extra-argument", ["cache", "clear", "everything"], "unrecognized arguments: everything"),
    ("bank-info-missing", ["bank", "info", "{ws}/nothing"], "no such bank directory"),
    ("bank-info-file", ["bank", "info", "{ws}/notes.txt"], "a file, not a bank directory"),
    ("bank-info-empty-folder", ["bank", "info", "{ws}/empty"], "manifest.json: missing"),
    ("bank-no-manifest", ["bank", "verify", f"{D}/no_manifest"], "manifest.json: missing"),
    ("bank-no-files", ["bank", "verify", f"{D}/no_files"], "missing field(s) 'files'"),
    ("bank-no-sources", ["bank", "verify", f"{D}/no_sources"], "missing field(s) 'sources'"),
    ("bank-no-counts", ["bank", "verify", f"{D}/no_counts"], "missing field(s) 'counts_by_kernel'"),
    ("bank-n-filters-string", ["bank", "verify", f"{D}/n_filters_str"], "'n_filters' is \"1840\", expected integer"),
    ("bank-n-filters-wrong", ["bank", "verify", f"{D}/n_filters_wrong"], "add up to 1840, not n_filters 5"),
    ("bank-schema-newer", ["bank", "verify", f"{D}/schema_v2"], "schema version 2 is newer"),
    ("bank-schema-bool", ["bank", "verify", f"{D}/schema_bool"], "'schema_version' is true, expected integer"),
    ("bank-files-traversal", ["bank", "verify", f"{D}/files_traversal"], "also names '../outside.safetensors'"),
    ("bank-files-bad-sha", ["bank", "verify", f"{D}/files_bad_sha"], "64-digit hex sha256"),
    ("bank-files-no-size", ["bank", "verify", f"{D}/files_no_size"], "missing field(s) 'bytes'"),
    ("bank-files-missing-tensor", ["bank", "verify", f"{D}/files_missing_tensor"], "lacks filters_k7.safetensors"),
    ("bank-source-duplicate", ["bank", "verify", f"{D}/source_dup"], "repeated name"),
    ("bank-source-count", ["bank", "verify", f"{D}/source_count"], "add up to 3, not 1840"),
    ("bank-excluded-wrong", ["bank", "verify", f"{D}/excluded_wrong"], "excluded filters"),
    ("bank-extra-field", ["bank", "verify", f"{D}/extra_field"], "unknown field(s) 'trusted'"),
    ("bank-manifest-list", ["bank", "verify", f"{D}/as_list"], "not a masterkey bank manifest"),
    ("bank-manifest-not-json", ["bank", "verify", f"{D}/not_json"], "manifest.json: not valid JSON"),
    ("bank-format-other", ["bank", "info", f"{D}/format_other"], "not a masterkey bank manifest"),
    ("bank-truncated", ["bank", "info", f"{D}/truncated"], "filters_k7.safetensors: 1000 bytes"),
    ("bank-flipped", ["bank", "verify", f"{D}/flipped"], "metadata.parquet: checksum mismatch"),
    ("bank-query-syntax", ["bank", "query", "{ws}/bank", "kernel_size =="], "invalid query"),
    ("bank-query-code", ["bank", "query", "{ws}/bank", "__import__('os').getcwd()"], "no attribute access"),
    ("bank-query-empty-out", ["bank", "query", "{ws}/bank", "kernel_size == 3", "-o", "{out}"], "is empty"),
    ("bank-query-out-input", ["bank", "query", "{ws}/bank", "stage == 0", "-o", "{ws}/bank", "--overwrite"], "input"),
    ("bank-query-out-inside", ["bank", "query", "{ws}/bank", "stage == 0", "-o", "{ws}/bank/sub"], "lies inside"),
    ("bank-merge-out-input", ["bank", "merge", "{ws}/bank", "-o", "{ws}/bank", "--overwrite"], "is an input"),
    ("bank-merge-twice", ["bank", "merge", "{ws}/bank", "{ws}/bank", "-o", "{out}"], "count its filters twice"),
    ("bank-merge-damaged", ["bank", "merge", "{ws}/bank", f"{D}/no_files", "-o", "{out}"], "missing field(s)"),
    ("bank-query-userdir", ["bank", "query", "{ws}/bank", "stage == 0", "-o", "{ws}/userdir", "--overwrite"], "not a"),
    # ------------------------------------------------------------------ keys
    ("keys-random-word", ["keys", "show", "random:abc"], "the number of keys K must be a whole number"),
    ("keys-random-zero", ["keys", "show", "random:0"], "must be from 1 to 10,000, got 0"),
    ("keys-random-huge", ["keys", "show", "random:100000000", "--kernel-size", "4"], "got 100,000,000"),
    ("keys-random-float", ["keys", "show", "random:1e3"], "got '1e3'"),
    ("keys-random-empty", ["keys", "show", "random:"], "got ''"),
    ("keys-random-bare", ["keys", "show", "random"], "give the number of keys"),
    ("keys-random-neg-seed", ["keys", "show", "random:8:-1"], "the seed must be a whole number"),
    ("keys-random-huge-seed", ["keys", "show", "random:8:99999999999999999999"], "the seed must be from 0"),
    ("keys-random-extra", ["keys", "show", "random:8:0:1"], "random is written random:K[:SEED]"),
    ("keys-paper8-args", ["keys", "show", "paper8:3"], "paper8 takes no arguments"),
    ("keys-empty-spec", ["keys", "show", ""], "keys '': empty"),
    ("keys-unknown", ["keys", "show", "paper9"], "neither a key file nor a built-in"),
    ("keys-kernel-zero", ["keys", "show", "impulse", "--kernel-size", "0"], "expected an integer from 2 to 63, got 0"),
    ("keys-kernel-negative", ["keys", "show", "impulse", "--kernel-size", "-3"], "got -3"),
    ("keys-kernel-huge", ["keys", "show", "random:8", "--kernel-size", "4000"], "got 4,000"),
    ("keys-kernel-word", ["keys", "show", "impulse", "--kernel-size", "big"], "got 'big'"),
    ("keys-scalespace-even", ["keys", "show", "scalespace8", "--kernel-size", "4"], "odd kernel sizes >= 3"),
    ("keys-resize-parity", ["keys", "show", "paper8", "--kernel-size", "4", "--resize-keys"], "same parity"),
    ("keys-no-resize", ["keys", "show", "paper8", "--kernel-size", "3"], "pass --resize-keys"),
    ("keys-text-2x3", ["keys", "show", f"{K}/k2x3.txt"], "key 1 is 2 row(s) of 3 number(s); a key is square"),
    ("keys-text-mixed", ["keys", "show", f"{K}/mixed.txt"], "key 2 is 3x3 but key 1 is 2x2"),
    ("keys-text-nan", ["keys", "show", f"{K}/nan.txt"], "nan.txt:2: non-finite value"),
    ("keys-text-words", ["keys", "show", f"{K}/words.txt"], "words.txt:2: expected a row of numbers"),
    ("keys-text-binary", ["keys", "show", f"{K}/binary.txt"], "not a text key file"),
    ("keys-text-empty", ["keys", "show", f"{K}/empty.txt"], "no keys found"),
    ("keys-text-constant", ["keys", "show", f"{K}/constant.txt"], "unusable"),
    ("keys-st-bad-meta", ["keys", "show", f"{K}/bad_meta.safetensors"], "corrupt key-set metadata"),
    ("keys-st-bad-labels", ["keys", "show", f"{K}/bad_labels.safetensors"], "corrupt key-set metadata (labels=5)"),
    ("keys-st-two-tensors", ["keys", "show", f"{K}/two.safetensors"], "expected one tensor named 'keys'"),
    ("keys-st-flat", ["keys", "show", f"{K}/flat.safetensors"], "keys must have shape [K, k, k]"),
    ("keys-st-nan", ["keys", "show", f"{K}/nan.safetensors"], "NaN or Inf"),
    ("keys-st-garbage", ["keys", "show", f"{K}/garbage.safetensors"], "not a readable safetensors key file"),
    ("keys-folder", ["keys", "show", "{ws}/fit"], "is not a discover run nor a key file (no keys.safetensors"),
    ("keys-folder-hint", ["keys", "show", "{ws}/fit"], "key files in it: keys_k7.safetensors"),
    ("keys-convert-over-model", ["keys", "convert", "paper8", "-o", M], "already exists (pass --overwrite"),
    ("keys-convert-over-model-ow", ["keys", "convert", "paper8", "-o", M, "--overwrite"], "is not a masterkey output"),
    ("keys-convert-over-text", ["keys", "convert", "paper8", "-o", "{ws}/notes.txt", "--overwrite"], "not a masterkey"),
    (
        "keys-convert-over-input",
        ["keys", "convert", f"{K}/paper8.txt", "-o", f"{K}/paper8.txt", "--overwrite"],
        "input",
    ),
    ("keys-convert-over-folder", ["keys", "convert", "paper8", "-o", "{ws}/userdir", "--overwrite"], "not a masterkey"),
    ("keys-convert-over-bank", ["keys", "convert", "paper8", "-o", "{ws}/bank", "--overwrite"], "a masterkey bank"),
    # ------------------------------------------------------------------ fit
    ("fit-chunk-zero", ["fit", "{ws}/bank", "--chunk-size", "0"], "argument --chunk-size: expected an integer"),
    ("fit-chunk-huge", ["fit", "{ws}/bank", "--chunk-size", "10000000000"], "got 10,000,000,000"),
    ("fit-device-nonsense", ["fit", "{ws}/bank", "--device", "banana"], "expected cpu, cuda, cuda:N or auto"),
    ("fit-device-cpu-index", ["fit", "{ws}/bank", "--device", "cpu:1"], "got 'cpu:1'"),
    ("fit-reference-bogus", ["fit", "{ws}/bank", "--reference", "bogus"], "invalid choice: 'bogus'"),
    ("fit-reference-seed", ["fit", "{ws}/bank", "--reference-seed", "-1"], "expected an integer from 0"),
    ("fit-keys-bad", ["fit", "{ws}/bank", "--keys", "random:0"], "must be from 1 to 10,000"),
    (
        "fit-keys-mismatch",
        ["fit", "{ws}/bank", "--keys", f"{K}/k3.safetensors"],
        "kernel-size mismatch: the bank holds 7x7 filters but keys 'k3' are 3x3",
    ),
    ("fit-query-empty", ["fit", "{ws}/bank", "--query", "kernel_size == 3"], "holds no filters"),
    ("fit-query-bad", ["fit", "{ws}/bank", "--query", "no_such_column > 1"], "no column 'no_such_column'"),
    ("fit-damaged-bank", ["fit", f"{D}/no_files", "--keys", "paper8"], "missing field(s) 'files'"),
    ("fit-tampered-counts", ["fit", f"{D}/source_count", "--keys", "paper8"], "add up to 3"),
    ("fit-out-is-bank", ["fit", "{ws}/bank", "-o", "{ws}/bank", "--overwrite"], "is an input of this command"),
    ("fit-out-in-bank", ["fit", "{ws}/bank", "-o", "{ws}/bank/fits"], "lies inside the input"),
    ("fit-out-userdir", ["fit", "{ws}/bank", "-o", "{ws}/userdir", "--overwrite"], "is not a masterkey output"),
    ("fit-out-exists", ["fit", "{ws}/bank", "-o", "{ws}/fit"], "already exists"),
    ("fit-out-empty", ["fit", "{ws}/bank", "-o", ""], "argument -o/--out: expected a path, got an empty value"),
    ("fit-out-cwd", ["fit", "{ws}/bank", "-o", ".", "--overwrite"], ". is the current folder or holds it"),
    ("fit-out-key-file", ["fit", "{ws}/bank", "--keys", f"{K}/paper8.txt", "-o", f"{K}/paper8.txt"], "input"),
    # ------------------------------------------------------------------ discover
    ("disc-k-zero", [*DISC, "-k", "0"], "argument -k/--n-keys: expected an integer from 1"),
    ("disc-keys-renamed", [*DISC, "--keys", "8"], "argument --keys: in discover the number of keys is -k/--n-keys"),
    ("disc-k-huge", [*DISC, "-k", "5000"], "got 5,000"),
    ("disc-candidates-one", [*DISC, "--candidates", "1"], "argument --candidates"),
    ("disc-candidates-huge", [*DISC, "--candidates", "1000000"], "got 1,000,000"),
    ("disc-dedupe-two", [*DISC, "--dedupe", "2"], "argument --dedupe"),
    ("disc-dedupe-nan", [*DISC, "--dedupe", "nan"], "got 'nan'"),
    ("disc-ae-hidden", [*DISC, "--ae-hidden", "100000"], "argument --ae-hidden"),
    ("disc-ae-batch", [*DISC, "--ae-batch", "0"], "argument --ae-batch"),
    ("disc-ae-lr", [*DISC, "--ae-lr", "-1"], "argument --ae-lr"),
    ("disc-ae-steps", [*DISC, "--ae-steps", "0"], "argument --ae-steps"),
    ("disc-spread-inf", [*DISC, "--spread", "inf"], "argument --spread"),
    ("disc-seed-negative", [*DISC, "--seed", "-1"], "argument --seed"),
    ("disc-kernel-zero", [*DISC, "--kernel-size", "0"], "argument --kernel-size"),
    ("disc-kernel-word", [*DISC, "--kernel-size", "3,x"], "got 'x' (in '3,x')"),
    ("disc-kernel-absent", [*DISC, "--kernel-size", "5"], "no 5x5 filters"),
    ("disc-compare-zero", [*DISC, "--compare-k", "0"], "argument --compare-k"),
    ("disc-random-seeds", [*DISC, "--random-seeds", "0"], "argument --random-seeds"),
    ("disc-threads", [*DISC, "--threads", "0"], "argument --threads"),
    ("disc-device", [*DISC, "--device", "tpu"], "argument --device"),
    ("disc-held-out-zero", [*DISC, "--held-out", "0"], "argument --held-out"),
    ("disc-held-out-fraction", [*DISC, "--held-out", "1.5"], "argument --held-out"),
    ("disc-baseline", [*DISC, "--baselines", "nope"], "unknown baseline(s)"),
    ("disc-path-to", [*DISC, "--path-to", "50"], "--path-to must lie in 1..K"),
    ("disc-accuracy-no-weights", [*DISC, "--objective", "accuracy"], "needs --weights"),
    ("disc-accuracy-test-split", [*DISC, "--objective", "accuracy", "--weights", M, "--data", f"{DATA}/test"], "test"),
    ("disc-out-is-bank", ["discover", "{ws}/bank", "-o", "{ws}/bank", "--overwrite"], "is an input of this command"),
    ("disc-out-userdir", ["discover", "{ws}/bank", "-o", "{ws}/userdir", "--overwrite"], "is not a masterkey"),
    ("disc-out-fit", ["discover", "{ws}/bank", "-o", "{ws}/fit", "--overwrite"], "is a masterkey fit output"),
    ("disc-damaged-bank", ["discover", f"{D}/truncated", "-o", "{out}"], "truncated or modified"),
    # ------------------------------------------------------------------ swap
    ("swap-batch-zero", [*SWAP, "--batch-size", "0"], "argument --batch-size"),
    ("swap-crossfit-one", [*SWAP, "--recalibrate", "10", "--crossfit", "1"], "argument --crossfit"),
    ("swap-crossfit-alone", [*SWAP, "--crossfit", "2"], "only used with --recalibrate"),
    ("swap-recal-zero", [*SWAP, "--recalibrate", "0", "--crossfit", "2"], "argument --recalibrate"),
    ("swap-recal-no-source", [*SWAP, "--recalibrate", "10"], "--recalibrate needs --calib-data"),
    ("swap-recal-layernorm", [*SWAP, "--recalibrate", "10", "--crossfit", "2"], "has no BatchNorm layer"),
    ("swap-calib-batch", [*SWAP, "--calib-batch-size", "1"], "argument --calib-batch-size"),
    ("swap-calib-both", [*SWAP, "--recalibrate", "4", "--crossfit", "2", "--calib-data", DATA], "exclude each other"),
    ("swap-seeds-zero", [*SWAP, "--seeds", "0"], "argument --seeds"),
    ("swap-seeds-huge", [*SWAP, "--seeds", "100000000"], "argument --seeds"),
    ("swap-max-images", [*SWAP, "--max-images", "0"], "argument --max-images"),
    ("swap-device", [*SWAP, "--device", "cuda:x"], "argument --device"),
    ("swap-keys-bad", ["swap", "--weights", M, "--keys", "random:abc", "--data", DATA], "must be a whole number"),
    (
        "swap-keys-size",
        ["swap", "--weights", M, "--keys", "random:8", "--keys", "random:20000", "--data", DATA],
        "20,000",
    ),
    ("swap-weights-missing", ["swap", "--weights", "{ws}/none.pth", "--keys", "paper8", "--data", DATA], "none.pth"),
    (
        "swap-data-file",
        ["swap", "--weights", M, "--keys", "paper8", "--data", "{ws}/notes.txt"],
        "notes.txt: a file, not a data folder",
    ),
    ("swap-data-empty", ["swap", "--weights", M, "--keys", "paper8", "--data", "{ws}/empty"], "no class folders"),
    ("swap-out-weights", [*SWAP, "-o", M, "--overwrite"], "is an input of this command"),
    ("swap-out-in-data", [*SWAP, "-o", f"{DATA}/test/new_class"], "lies inside the input"),
    ("swap-out-userdir", [*SWAP, "-o", "{ws}/userdir", "--overwrite"], "is not a masterkey output"),
    # ------------------------------------------------------------------ train
    ("train-batch-zero", [*TRAIN_OUT, "--batch-size", "0"], "argument --batch-size"),
    ("train-batch-huge", [*TRAIN_OUT, "--batch-size", "10000000"], "argument --batch-size"),
    ("train-epochs-zero", [*TRAIN_OUT, "--epochs", "0"], "argument --epochs"),
    ("train-image-size-huge", [*TRAIN_OUT, "--image-size", "100000"], "argument --image-size"),
    ("train-lr-nan", [*TRAIN_OUT, "--lr", "nan"], "argument --lr"),
    ("train-lr-zero", [*TRAIN_OUT, "--lr", "0"], "argument --lr"),
    ("train-min-lr", [*TRAIN_OUT, "--lr", "0.1", "--min-lr", "1"], "min_lr=1.0: expected at most lr"),
    ("train-ema", [*TRAIN_OUT, "--ema", "1.5"], "argument --ema"),
    ("train-smoothing", [*TRAIN_OUT, "--label-smoothing", "1"], "label_smoothing=1.0: expected a number in [0, 1)"),
    ("train-seeds-empty", [*TRAIN_OUT, "--seeds", ""], "--seeds '': expected integers"),
    ("train-seeds-dup", [*TRAIN_OUT, "--seeds", "0,0"], "each seed once"),
    ("train-seeds-word", [*TRAIN_OUT, "--seeds", "0,x"], "--seeds '0,x'"),
    ("train-seed-and-seeds", [*TRAIN_OUT, "--seed", "1", "--seeds", "0,1"], "--seed is for one run"),
    ("train-jobs-zero", [*TRAIN_OUT, "--jobs", "0"], "argument --jobs"),
    ("train-jobs-single", [*TRAIN_OUT, "--jobs", "2"], "--jobs trains several runs"),
    ("train-device", [*TRAIN_OUT, "--device", "gpu"], "argument --device"),
    ("train-threads", [*TRAIN_OUT, "--threads", "0"], "argument --threads"),
    ("train-keys-bad", [*TRAIN_OUT, "--mode", "frozen", "--keys", "random:0"], "must be from 1 to 10,000"),
    ("train-kwargs-bad", [*TRAIN, "--model-kwargs", "=3", "-o", "{out}"], "key=value pairs"),
    ("train-kwargs-json", [*TRAIN, "--model-kwargs", "{{oops", "-o", "{out}"], "not a JSON object"),
    (
        "train-model-too-big",
        [
            *TRAIN[:3],
            "--model-kwargs",
            '{{"num_classes": 10, "dims": [64, 128, 256, 65536]}}',
            *TRAIN[5:],
            "-o",
            "{out}",
        ],
        "parameters, more than 2,000,000,000",
    ),
    ("train-no-data", ["train", "--model", "convnext_atto", "-o", "{out}"], "no data folder given"),
    ("train-data-empty", ["train", "--data", "{ws}/empty", "-o", "{out}"], "{ws}/empty"),
    ("train-experiment-missing", [*TRAIN_OUT, "--experiment", "{ws}/none.toml"], "no such file"),
    ("train-experiment-not-toml", [*TRAIN_OUT, "--experiment", "{ws}/notes.txt"], "not valid TOML"),
    ("train-out-in-data", [*TRAIN, "-o", f"{DATA}/train/new_class"], "lies inside the input"),
    ("train-out-is-data", [*TRAIN, "-o", DATA, "--overwrite"], "is an input of this command"),
    ("train-out-userdir", [*TRAIN, "-o", "{ws}/userdir", "--overwrite"], "is not a masterkey output"),
    ("train-out-fit", [*TRAIN, "-o", "{ws}/fit", "--overwrite"], "is a masterkey fit output"),
    ("train-resume-nothing", [*TRAIN_OUT, "--resume"], "nothing to resume"),
    ("train-collect-missing", ["train", "--collect", "{ws}/none", "-o", "{out}"], "not an experiment or train run"),
    ("train-collect-seeds", ["train", "--collect", "{ws}/fit", "--seeds", "0", "-o", "{out}"], "trains nothing"),
    ("train-collect-bad-json", ["train", "--collect", "{ws}/runs/bad_json", "-o", "{out}"], "not valid JSON"),
    # ------------------------------------------------------------------ explain
    ("explain-max-images", [*EXPLAIN, "--max-images", "0"], "argument --max-images"),
    ("explain-components-zero", [*EXPLAIN, "--components", "0"], "argument --components"),
    ("explain-components-many", [*EXPLAIN, "--components", "100"], "--components 100: 7x7 patches have at most 49"),
    ("explain-stride", [*EXPLAIN, "--stride", "0"], "argument --stride"),
    ("explain-patches-zero", [*EXPLAIN, "--max-patches", "0"], "argument --max-patches"),
    ("explain-patches-values", [*EXPLAIN, "--max-patches", "5000000"], "would hold 245,000,000 values"),
    ("explain-seeds", [*EXPLAIN, "--seeds", "0"], "argument --seeds"),
    ("explain-sigma-inf", [*EXPLAIN, "--window-sigma", "inf"], "argument --window-sigma"),
    ("explain-sigma-zero", [*EXPLAIN, "--window-sigma", "0"], "argument --window-sigma"),
    ("explain-images-unknown", ["explain", "--images", "nonexistent"], "not a built-in image"),
    ("explain-images-empty", ["explain", "--images", "{ws}/empty"], "no images found"),
    ("explain-images-text", ["explain", "--images", "{ws}/notes.txt"], "cannot decode image"),
    ("explain-family", [*EXPLAIN, "--family", "nope"], "scale-space family 'nope' is unknown"),
    ("explain-keys-bad", ["explain", "random:abc"], "must be a whole number"),
    ("explain-out-images", [*EXPLAIN[:1], "--images", f"{DATA}/test", "-o", f"{DATA}/test/x"], "lies inside the input"),
    ("explain-out-userdir", [*EXPLAIN, "-o", "{ws}/userdir", "--overwrite"], "is not a masterkey output"),
    # ------------------------------------------------------------------ report
    ("report-missing", ["report", "{ws}/none", "-o", "{out}"], "no such run directory"),
    ("report-bank", ["report", "{ws}/bank", "-o", "{out}"], "not a run directory (no run.json"),
    ("report-empty", ["report", "{ws}/empty", "-o", "{out}"], "not a run directory"),
    ("report-bad-json", ["report", "{ws}/runs/bad_json", "-o", "{out}"], "run.json: not valid JSON"),
    ("report-unknown-kind", ["report", "{ws}/runs/unknown_kind", "-o", "{out}"], "unknown run kind 'mystery'"),
    ("report-config-list", ["report", "{ws}/runs/config_list", "-o", "{out}"], "'config' must be an object"),
    ("report-out-input", ["report", "{ws}/fit", "-o", "{ws}/fit", "--overwrite"], "is an input of this command"),
    ("report-out-inside", ["report", "{ws}/fit", "-o", "{ws}/fit/report"], "lies inside the input"),
    ("report-out-bank", ["report", "{ws}/fit", "-o", "{ws}/bank", "--overwrite"], "is a masterkey bank output"),
    ("report-out-userdir", ["report", "{ws}/fit", "-o", "{ws}/userdir", "--overwrite"], "is not a masterkey output"),
    ("report-samples-neg", ["report", "{ws}/fit", "-o", "{out}", "--samples", "-1"], "argument --samples"),
    ("report-samples-huge", ["report", "{ws}/fit", "-o", "{out}", "--samples", "100000"], "argument --samples"),
]


def test_at_least_a_hundred_cases_cover_every_command():
    from masterkey.cli import _commands

    assert len(CASES) >= 100 and len({name for name, _, _ in CASES}) == len(CASES)
    covered = {argv[0] for _, argv, _ in CASES}
    assert set(_commands()) <= covered


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line_and_changes_nothing(workspace, capsys, argv, expected, one_thread):
    before = snapshot(workspace)
    args = [a.format(ws=workspace, out=workspace / "out") for a in argv]
    outcome = run_cli(capsys, args)
    assert_clean_failure(outcome, expected.format(ws=workspace))
    assert snapshot(workspace) == before
