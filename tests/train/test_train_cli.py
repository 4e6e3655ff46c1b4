"""franca-train's command-line contract on generated IDX data: a tiny run trains,
resume is bit-identical (10 steps straight == 5 + resume + 5), the export loads
in franca-embed, `franca-train knn` prints its exact line format, and bad
configs and flags fail with a clear message and exit code 2 (or 1)."""
import gzip
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reftrain import read_safetensors  # noqa: E402

BUILD = os.environ.get("FRANCA_BUILD_ROOT", "build")
TRAIN = os.environ.get("FRANCA_TRAIN", os.path.join(BUILD, "train", "franca-train"))
EMBED = os.environ.get("FRANCA_EMBED", os.path.join(BUILD, "engine", "franca-embed"))

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")


def run(*args, exe=None):
    return subprocess.run([exe or TRAIN, *map(str, args)], capture_output=True, text=True, timeout=900)


def write_idx(path, arr, gz):
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def make_data(tmp):
    rng = np.random.default_rng(0)
    def images(n):
        labels = np.arange(n) % 4
        x = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            if c == 0: x[i, 4:24:4, :] += 180          # horizontal bars
            if c == 1: x[i, :, 4:24:4] += 180          # vertical bars
            if c == 2: x[i, 8:20, 8:20] += 180         # a square
            if c == 3: x[i, ::2, ::2] += 120           # a checkerboard
        return np.clip(x, 0, 255), labels
    xtr, ytr = images(96)
    xte, yte = images(40)
    paths = {}
    for name, arr, gz in (("train-images.gz", xtr, True), ("train-labels.gz", ytr, True),
                          ("test-images", xte, False), ("test-labels", yte, False)):
        paths[name] = os.path.join(tmp, name)
        write_idx(paths[name], arr, gz)
    return paths


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))



def main():
    tmp = tempfile.mkdtemp(prefix="train_cli_")
    d = make_data(tmp)
    cfg = {
        "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 7, "global_size": 28,
        "local_size": 14, "n_local": 2, "head_hidden": 32, "head_bottleneck": 16,
        "head_prototypes": 64, "n_levels": 3, "level_weights": [2.0, 1.0, 0.5], "batch_size": 4, "steps": 10, "warmup_steps": 3,
        "freeze_last_layer_steps": 2, "teacher_temp_warmup_steps": 4, "drop_path": 0.1,
        "train_idx": d["train-images.gz"],
        "knn_train_images": d["train-images.gz"], "knn_train_labels": d["train-labels.gz"],
        "knn_test_images": d["test-images"], "knn_test_labels": d["test-labels"],
        "eval_every": 5, "checkpoint_every": 3, "log_every": 1, "threads": 2, "seed": 11,
    }
    cfg_path = os.path.join(tmp, "tiny.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)

    # A straight run of 10 steps.
    a = os.path.join(tmp, "a")
    p = run("--config", cfg_path, "--out", a)
    check(p.returncode == 0, f"tiny run trains (rc {p.returncode}: {p.stderr.strip()[-300:]})")
    progress = [l for l in p.stdout.splitlines() if l.startswith("step ")]
    check(len(progress) == 10 and "loss" in progress[0] and "img/s" in progress[0] and "eta" in progress[0],
          "one progress line per step with loss, img/s and ETA")
    check(sum(l.startswith("eval step") for l in p.stdout.splitlines()) == 2, "k-NN evaluated at steps 5 and 10")
    for name in ("state.safetensors", "log.jsonl", "chart.png", "config.json"):
        check(os.path.exists(os.path.join(a, name)), f"run directory holds {name}")
    with open(os.path.join(a, "log.jsonl")) as f:
        log = [json.loads(l) for l in f]
    check(any("knn" in e and set(e["knn"]) == {"8", "16", "32"} for e in log), "JSONL log has k-NN at every width")
    check(all(np.isfinite(e["loss"]) for e in log if "loss" in e), "finite losses")
    with open(os.path.join(a, "chart.png"), "rb") as f:
        check(f.read(8) == b"\x89PNG\r\n\x1a\n", "chart is a PNG")

    # Resume identity: 5 steps, then resume to 10.
    b = os.path.join(tmp, "b")
    p = run("--config", cfg_path, "--out", b, "--stop_at", "5")
    check(p.returncode == 0, f"first half (rc {p.returncode}: {p.stderr.strip()[-300:]})")
    hdr = safetensors_header(os.path.join(b, "state.safetensors"))
    meta = json.loads(hdr["__metadata__"]["franca_train_state"])
    check(meta["step"] == 5, f"state after 5 steps says step 5 ({meta['step']})")
    p = run("--resume", b)
    check(p.returncode == 0, f"resume (rc {p.returncode}: {p.stderr.strip()[-300:]})")
    with open(os.path.join(a, "state.safetensors"), "rb") as f1, open(os.path.join(b, "state.safetensors"), "rb") as f2:
        check(f1.read() == f2.read(), "10 steps straight == 5 + resume + 5 (byte-equal state files)")

    # Export, then franca-embed and knn.
    model = os.path.join(tmp, "model.safetensors")
    p = run("export", a, "--out", model)
    check(p.returncode == 0 and os.path.exists(model), f"export (rc {p.returncode}: {p.stderr.strip()})")
    franca = json.loads(safetensors_header(model)["__metadata__"]["franca"])
    check(franca.get("trained") is True and franca["recipe"]["step"] == 10 and
          franca["recipe"]["config"]["embed_dim"] == 32 and
          franca["recipe"]["config"]["level_weights"] == [2.0, 1.0, 0.5], "export metadata: trained, recipe with step and config")
    check(not any(k.startswith(("dino_head", "ibot_head", "student", "teacher")) for k in safetensors_header(model)),
          "export holds only the backbone")
    npy = os.path.join(tmp, "x.npy")
    np.save(npy, np.random.default_rng(1).standard_normal((2, 3, 28, 28)).astype(np.float32))
    emb = os.path.join(tmp, "emb.safetensors")
    p = run("--model", model, "--input-npy", npy, "--out", emb, exe=EMBED)
    check(p.returncode == 0 and os.path.exists(emb), f"franca-embed loads the export ({p.stderr.strip()})")
    # bf16 export: every backbone tensor in BF16, and the same embeddings to bf16 rounding.
    model16 = os.path.join(tmp, "model16.safetensors")
    p = run("export", a, "--out", model16, "--dtype", "bf16")
    hdr16 = safetensors_header(model16) if p.returncode == 0 else {}
    check(p.returncode == 0 and {v["dtype"] for k, v in hdr16.items() if k != "__metadata__"} == {"BF16"}
          and os.path.getsize(model16) < 0.6 * os.path.getsize(model), f"export --dtype bf16 ({p.stderr.strip()})")
    emb16 = os.path.join(tmp, "emb16.safetensors")
    p = run("--model", model16, "--input-npy", npy, "--out", emb16, exe=EMBED)
    check(p.returncode == 0, f"franca-embed loads the bf16 export ({p.stderr.strip()})")
    if p.returncode == 0:
        c32, c16 = read_safetensors(emb)["cls"], read_safetensors(emb16)["cls"]
        cos = (c32 * c16).sum(1) / np.linalg.norm(c32, axis=1) / np.linalg.norm(c16, axis=1)
        check(cos.min() > 0.999, f"bf16 export embeds like f32 (min cosine {cos.min():.6f})")
    check(run("export", a, "--out", model16, "--dtype", "f8").returncode == 2, "export --dtype f8: exit 2")

    knn_args = ["knn", "--model", model, "--train-idx", d["train-images.gz"], d["train-labels.gz"],
                "--test-idx", d["test-images"], d["test-labels"]]
    p = run(*knn_args)
    lines = p.stdout.splitlines()
    check(p.returncode == 0 and [re.fullmatch(r"knn width=(\d+) top1=(0|1)\.\d{4}", l) is not None for l in lines]
          == [True] * 3 and [l.split()[1] for l in lines] == ["width=8", "width=16", "width=32"],
          f"knn prints one exact line per Matryoshka width: {lines}")
    p = run(*knn_args, "--width", "16")
    check(p.returncode == 0 and len(p.stdout.splitlines()) == 1 and p.stdout.startswith("knn width=16 top1="),
          "knn --width W prints one line")
    check(run(*knn_args, "--width", "0").returncode == 2, "knn --width 0: exit 2")
    check(run(*knn_args, "--width", "33").returncode == 2, "knn --width above D: exit 2")
    check(run("knn", "--model", model).returncode == 2, "knn without data: exit 2")
    p = run("knn", "--model", os.path.join(tmp, "none.safetensors"), "--train-idx", d["train-images.gz"],
            d["train-labels.gz"], "--test-idx", d["test-images"], d["test-labels"])
    check(p.returncode == 1 and "none.safetensors" in p.stderr, "knn with a missing model: exit 1 naming it")
    p = run("knn", "--model", model, "--train-idx", d["train-images.gz"], d["test-labels"],
            "--test-idx", d["test-images"], d["test-labels"])
    check(p.returncode == 1 and "labels" in p.stderr, "knn with mismatched labels: exit 1")

    # Bad configs and flags.
    def bad_config(obj, needle, what, code=2):
        path = os.path.join(tmp, "bad.json")
        with open(path, "w") as f:
            f.write(obj if isinstance(obj, str) else json.dumps(obj))
        p = run("--config", path, "--out", os.path.join(tmp, "bad"))
        check(p.returncode == code and needle in p.stderr, f"{what}: exit {code} ({p.stderr.strip()})")
    bad_config({"embed_dim": 32, "bogus_key": 1}, "bogus_key", "unknown key")
    bad_config({"embed_dim": "wide"}, "embed_dim", "wrong type")
    bad_config({"batch_size": 0}, "batch_size", "out of range")
    bad_config({"embed_dim": 30, "num_heads": 4}, "num_heads", "embed_dim not divisible by heads")
    bad_config({"masking": "random"}, "masking", "unknown masking")
    bad_config("{\"steps\": 3,", "JSON", "invalid JSON")
    bad_config([1, 2], "object", "not an object")
    bad_config({"level_weights": [1, 1]}, "level_weights", "level_weights count != n_levels")
    bad_config({"level_weights": [1, -1, 1, 1, 1]}, "level_weights", "negative level weight")
    bad_config({"level_weights": 2}, "level_weights", "level_weights not an array")
    p = run("--config", os.path.join(tmp, "missing.json"), "--out", os.path.join(tmp, "bad"))
    check(p.returncode == 2 and "missing.json" in p.stderr, "missing config: exit 2 naming it")
    p = run("--config", cfg_path, "--out", os.path.join(tmp, "bad"), "--no_such_flag", "1")
    check(p.returncode == 2 and "--no_such_flag" in p.stderr, "unknown flag: exit 2")
    p = run("--config", cfg_path, "--out", os.path.join(tmp, "bad"), "--steps", "ten")
    check(p.returncode == 2 and "--steps" in p.stderr, "non-numeric flag value: exit 2")
    p = run("--config", cfg_path, "--out", os.path.join(tmp, "bad"), "--level-weights", "1,x,1")
    check(p.returncode == 2 and "level_weights" in p.stderr, "malformed --level-weights: exit 2")
    p = run("--config", cfg_path)
    check(p.returncode == 2 and "--out" in p.stderr, "missing --out: exit 2")
    p = run()
    check(p.returncode == 2, "no arguments: exit 2")
    p = run("--help")
    check(p.returncode == 0 and "embed_dim" in p.stdout and "batch_size" in p.stdout, "--help lists the keys")
    p = run("--resume", os.path.join(tmp, "nowhere"))
    check(p.returncode == 1 and "nowhere" in p.stderr, "resume of a missing run: exit 1")
    p = run("export", os.path.join(tmp, "nowhere"), "--out", model)
    check(p.returncode == 1, "export of a missing run: exit 1")
    p = run("export", a)
    check(p.returncode == 2, "export without --out: exit 2")
    p = run("--config", cfg_path, "--out", os.path.join(tmp, "c"), "--train_idx", d["test-labels"])
    check(p.returncode == 1 and "test-labels" in p.stderr, "labels file as training images: exit 1 naming it")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
