"""Post-training (SPEC §3): label masks, data mixing, bad input, Ray Train + DeepSpeed ZeRO-2/3 on
2 CPU workers (gloo), checkpoints local and on S3, restart after a killed worker, a new run from a
checkpoint, and the exported Hugging Face folder in transformers and vLLM."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from adamllm_ray import storage
from adamllm_ray.cli import main as cli_main
from adamllm_ray.config import ConfigError, validate
from adamllm_ray.training.config import TrainConfig, TrainDataConfig
from adamllm_ray.embedded.training_set import write_training_set
from adamllm_ray.families import HINTS, get_family
from adamllm_ray.training import data, download, masks
from adamllm_ray.training.loop import TrainState, lr_schedule, param_groups

QWEN = get_family("qwen2_vl")
CAPTION = "A red circle on a white background. There is one shape in the picture."
CONVERSATION = [
    {"role": "user", "content": "<image>\nDescribe the image."},
    {"role": "assistant", "content": CAPTION},
    {"role": "user", "content": "What color is the circle?"},
    {"role": "assistant", "content": "Red."},
]
QA = [{"question": "What color is the circle?", "kind": "precise", "answer": "Red."},
      {"question": "What color is the circle?", "kind": "informative",
       "answer": "The circle in the image is filled with red, so the answer is red."}]


@pytest.fixture(scope="module")
def processor(tiny_qwen2_vl):
    return download.load_processor(tiny_qwen2_vl)


def red() -> Image.Image:
    return Image.new("RGB", (64, 64), (220, 40, 40))


def labeled(enc, processor) -> tuple[str, str]:
    """(text of the tokens with labels, text of the ones without)."""
    ids, labels = enc["tensors"]["input_ids"][0], enc["tensors"]["labels"][0]
    on = [int(i) for i, lab in zip(ids, labels) if lab != masks.IGNORE]
    off = [int(i) for i, lab in zip(ids, labels) if lab == masks.IGNORE]
    assert all(lab == i for i, lab in zip(ids, labels) if lab != masks.IGNORE)  # labels are the input ids
    return processor.tokenizer.decode(on), processor.tokenizer.decode(off)


# ---------------------------------------------------------------- label masks (no Ray)


def test_single_stage_labels_are_exactly_the_assistant_answers(processor):
    enc = masks.encode_example(CONVERSATION, [red()], processor, QWEN, max_length=4096)
    on, off = labeled(enc, processor)
    assert on == f"{CAPTION}<|im_end|>\nRed.<|im_end|>\n"
    assert off.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                          "<|vision_start|><|image_pad|>")
    assert off.endswith("<|vision_end|>\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"
                        "<|im_start|>user\nWhat color is the circle?<|im_end|>\n<|im_start|>assistant\n")
    tok = processor.tokenizer
    answers = [f"{CAPTION}<|im_end|>\n", "Red.<|im_end|>\n"]
    assert enc["num_label_tokens"] == sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    t = enc["tensors"]
    n_image = int(t["image_grid_thw"][0].prod()) // 4  # 2x2 patches merge into one token
    assert (t["input_ids"][0] == masks.image_token_id(processor)).sum() == n_image
    assert t["input_ids"].shape == t["labels"].shape == t["attention_mask"].shape == t["mm_token_type_ids"].shape
    assert not enc["truncated"]


def test_synthesizer_tuning_trains_everything_after_the_first_round(processor):
    """The text is the synthesizer's own format (families/), and the labels cover what it writes."""
    msgs = [{"role": "user", "content": "<image>Describe the image."}, {"role": "assistant", "content": CAPTION}]
    for qa in QA:
        msgs += [{"role": "user", "content": f"{HINTS[qa['kind']]}\n{qa['question']}"},
                 {"role": "assistant", "content": qa["answer"]}]
    enc = masks.encode_example(msgs, [red()], processor, QWEN, max_length=4096, synthesizer=True)
    on, off = labeled(enc, processor)
    fam = get_family("qwen2_vl")
    seed = fam.format_seed_conversation(CAPTION, QA)
    head = fam.prompt_head + CAPTION + fam.turn_close  # the first round, with the system turn
    assert seed.startswith(head)
    assert on == seed[len(head):]  # user turns included, ends with the end-of-text token
    assert on.startswith("<|im_start|>user\nAnswer with a precise response.\n") and on.endswith("<|endoftext|>")
    assert off.replace("<|image_pad|>", "") == head.replace("<|image_pad|>", "")


def test_truncation_keeps_the_image_and_counts(processor):
    long = [{"role": "user", "content": "<image>\nDescribe the image."},
            {"role": "assistant", "content": CAPTION * 20}]
    full = masks.encode_example(long, [red()], processor, QWEN, max_length=4096)
    cut = masks.encode_example(long, [red()], processor, QWEN, max_length=60)
    assert cut["truncated"] and not full["truncated"] and cut["num_tokens"] == 60
    for key in ("input_ids", "labels", "attention_mask", "mm_token_type_ids"):
        assert cut["tensors"][key].shape == (1, 60)
        assert (cut["tensors"][key] == full["tensors"][key][:, :60]).all()
    assert (cut["tensors"]["pixel_values"] == full["tensors"]["pixel_values"]).all()
    with pytest.raises(masks.SkipExample) as err:  # the image and prompt alone are over the limit
        masks.encode_example(long, [red()], processor, QWEN, max_length=20)
    assert err.value.kind == "too_long" and "max_length 20" in err.value.message
    prompt = next(k for k, lab in enumerate(full["tensors"]["labels"][0]) if lab != masks.IGNORE)  # tokens before the answer
    with pytest.raises(masks.SkipExample) as err:  # the answer starts right after the limit
        masks.encode_example(long, [red()], processor, QWEN, max_length=prompt)
    assert err.value.kind == "too_long" and "no answer token" in err.value.message
    one = masks.encode_example(long, [red()], processor, QWEN, max_length=prompt + 1)
    assert one["truncated"] and one["num_label_tokens"] == 1


def test_image_tags_become_image_parts():
    assert masks.to_chat([{"role": "user", "content": "<image>\nHi"}], 1)[0]["content"] == [
        {"type": "image"}, {"type": "text", "text": "\nHi"}]
    assert masks.to_chat([{"role": "user", "content": "Hi"}], 1)[0]["content"] == [
        {"type": "image"}, {"type": "text", "text": "Hi"}]


# ---------------------------------------------------------------- mixing modes and entry checks (no Ray)


def entry(i: int, messages: list[dict]) -> dict:
    return {"id": f"e{i}", "images": [f"images/{i}.png"], "messages": messages, "image_dir": "/data"}


def rounds(*pairs) -> list[dict]:
    out = []
    for q, a in pairs:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


ENTRIES = [
    entry(0, rounds(("<image>\nDescribe the image.", "cap0"), ("Q0", "A0"))),  # caption first
    entry(1, rounds(("<image>\nQ1", "A1"), ("Describe the image.", "cap1"))),  # caption last
    entry(2, rounds(("<image>\nDescribe the image.", "cap2"))),  # caption only
    entry(3, [{"role": "user", "content": "<image>\nQ3"}]),  # no assistant turn
    entry(4, rounds(("<image>\n<image>\nQ4", "A4"))),  # more tags than images
    entry(5, [{"role": "assistant", "content": "A5"}, {"role": "user", "content": "Q5"}]),  # wrong order
]


def texts(example) -> list[str]:
    return [m["content"] for m in json.loads(example["messages"])]


def test_mixing_modes_and_counted_skips():
    cfg = TrainDataConfig(path="x", shuffle=False)
    single = data.plan(ENTRIES, cfg, epochs=1)
    assert single.entries == 6 and len(single.examples) == 3
    assert single.skipped == {"no_assistant_turn": 1, "image_count": 1, "bad_turns": 1}
    assert any("entry e3: no assistant turn" in m for m in single.skip_messages)
    assert texts(single.examples[1]) == ["<image>\nQ1", "A1", "Describe the image.", "cap1"]

    two = data.plan(ENTRIES, cfg.model_copy(update={"mode": "two_stage"}), epochs=2)
    assert [texts(e) for e in two.examples] == (
        [["Describe the image.", "cap0"], ["Describe the image.", "cap1"], ["Describe the image.", "cap2"]] * 2
        + [["Q0", "A0"], ["Q1", "A1"]] * 2)
    assert [e["position"] for e in two.examples] == list(range(10))

    synthetic = data.plan(ENTRIES, cfg.model_copy(update={"mode": "synthetic_only"}), epochs=1)
    assert [texts(e) for e in synthetic.examples] == [["Q0", "A0"], ["Q1", "A1"]] and synthetic.left_out == 1
    captions = data.plan(ENTRIES, cfg.model_copy(update={"mode": "caption_only"}), epochs=1)
    assert [texts(e)[1] for e in captions.examples] == ["cap0", "cap1", "cap2"]


def test_epoch_order_is_seeded_and_differs_between_epochs():
    entries = [entry(i, rounds((f"<image>\nQ{i}", f"A{i}"))) for i in range(20)]
    cfg = TrainDataConfig(path="x", seed=3)
    a = [e["id"] for e in data.plan(entries, cfg, epochs=2).examples]
    assert a == [e["id"] for e in data.plan(entries, cfg, epochs=2).examples]
    assert sorted(a[:20]) == sorted(a[20:]) and a[:20] != a[20:]


def test_blank_images_in_synthesizer_tuning(tmp_path):
    entries = [entry(i, rounds(("<image>Describe the image.", "c"), ("Q", "A"))) for i in range(400)]
    for share, lo, hi in ((0.0, 0, 0), (1.0, 400, 400), (0.1, 20, 60)):
        cfg = TrainDataConfig(path="x", synthesizer_tuning=True, blank_image_share=share)
        assert lo <= sum(e["blank"] for e in data.plan(entries, cfg, 1).examples) <= hi
    red().save(tmp_path / "r.png")
    ex = {"images": ["r.png"], "image_dir": str(tmp_path), "blank": True}
    img = download.load_images(ex, TrainDataConfig(path="x").images)[0]
    assert img.size == (64, 64) and img.getcolors() == [(64 * 64, (255, 255, 255))]
    with pytest.raises(ValueError, match="single_stage"):
        data.plan(entries, TrainDataConfig(path="x", synthesizer_tuning=True, mode="two_stage"), 1)


# ---------------------------------------------------------------- loop pieces (no Ray)


def test_data_position_is_a_prefix_plus_stragglers():
    s = TrainState()
    s.merge_positions([0, 1, 2, 5, 7])
    assert (s.next_position, s.consumed_beyond) == (3, [5, 7])
    s.merge_positions([3, 4, 9])
    assert (s.next_position, s.consumed_beyond) == (6, [7, 9])
    again = TrainState.from_json(s.to_json())
    assert [again.consumed(p) for p in range(11)] == [True] * 6 + [False, True, False, True, False]


def _lrs(total_steps: int, warmup_ratio: float) -> list[float]:
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = lr_schedule(optimizer, total_steps, warmup_ratio)
    lrs = []
    for _ in range(total_steps + 1):
        lrs.append(round(optimizer.param_groups[0]["lr"], 4))
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_schedule_with_warmup():
    """Hugging Face's cosine schedule, warmup counted as its Trainer does (ceil(ratio x steps)):
    lr(s) = s / w while s < w, then (1 + cos(pi (s - w) / (T - w))) / 2."""
    # T = 10, w = ceil(0.2 x 10) = 2: 0/2, 1/2, then cos at (s - 2) / 8
    assert _lrs(10, 0.2) == [0.0, 0.5, 1.0, 0.9619, 0.8536, 0.6913, 0.5, 0.3087, 0.1464, 0.0381, 0.0]
    # T = 7, w = ceil(0.1 x 7) = 1: one warmup step at 0, then cos at (s - 1) / 6
    assert _lrs(7, 0.1) == [0.0, 1.0, 0.9330, 0.75, 0.5, 0.25, 0.0670, 0.0]
    # no warmup: the cosine from the first step
    assert _lrs(4, 0.0) == [1.0, 0.8536, 0.5, 0.1464, 0.0]


def test_model_folders_copy_to_and_from_s3(tmp_path, s3_prefix, monkeypatch):
    """A checkpoint or model folder goes to S3 and comes back file for file (subfolders too); an s3://
    model is downloaded once into the node's cache and found there the next time."""
    import tempfile

    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    download.copy_tree(str(src), f"{s3_prefix}/m")
    back = tmp_path / "back"
    download.copy_tree(f"{s3_prefix}/m", str(back))
    assert sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file()) == [
        "config.json", "sub/weights.bin"]
    assert (back / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    local = download.local_model(f"{s3_prefix}/m")
    assert Path(local).parent == tmp_path / "cache" / "adamllm-models"
    assert Path(local, "config.json").read_text() == '{"a": 1}'
    download.copy_tree(str(src / "sub"), f"{s3_prefix}/m/sub2")  # a changed prefix is not downloaded again
    assert download.local_model(f"{s3_prefix}/m") == local and not Path(local, "sub2").exists()


def test_collate_pads_and_concatenates():
    import numpy as np

    a = {"input_ids": np.array([[5, 6, 7]]), "labels": np.array([[-100, 6, 7]]), "attention_mask": np.ones((1, 3), int),
         "pixel_values": np.zeros((4, 2)), "image_grid_thw": np.array([[1, 2, 2]])}
    b = {"input_ids": np.array([[8]]), "labels": np.array([[8]]), "attention_mask": np.ones((1, 1), int),
         "pixel_values": np.ones((8, 2)), "image_grid_thw": np.array([[1, 2, 4]])}
    batch = masks.collate([a, b], QWEN, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["pixel_values"].shape == (12, 2) and batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4]]


def test_param_groups_learning_rates_and_freezing(tiny_qwen2_vl):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_vl)
    names = dict(model.named_parameters())
    parts = {n: QWEN.part_of(n) for n in names}
    assert parts["model.visual.patch_embed.proj.weight"] == "vision_tower"
    assert parts["model.visual.merger.mlp.0.weight"] == "projector"
    assert parts["lm_head.weight"] == parts["model.language_model.embed_tokens.weight"] == "language_model"
    cfg = TrainConfig.model_validate({"model": "m", "output": "o", "data": {"path": "x"},
                                      "optim": {"lr": 1e-5, "vision_lr": 2e-6, "weight_decay": 0.1},
                                      "freeze": {"projector": True}})
    groups = param_groups(model, cfg, QWEN)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    for n, p in names.items():
        if parts[n] == "projector":
            assert not p.requires_grad and id(p) not in by_param
            continue
        lr, wd = by_param[id(p)]
        assert lr == (2e-6 if parts[n] == "vision_tower" else 1e-5)
        assert wd == (0.1 if p.ndim >= 2 else 0.0)
    all_frozen = cfg.model_copy(update={"freeze": cfg.freeze.model_copy(
        update={"vision_tower": True, "language_model": True})})
    with pytest.raises(ValueError, match="nothing to train"):
        param_groups(model, all_frozen, QWEN)


def test_global_batch_must_split_over_workers():
    with pytest.raises(ConfigError, match="not a multiple of micro_batch_size"):
        validate(TrainConfig, {"model": "m", "output": "o", "data": {"path": "x"}, "global_batch_size": 6,
                               "micro_batch_size": 2, "scaling": {"num_workers": 2}}, check_paths=False)
    cfg = validate(TrainConfig, {"model": "m", "output": "o", "data": {"path": "x"}, "global_batch_size": 128,
                                 "micro_batch_size": 4, "scaling": {"num_workers": 8}}, check_paths=False)
    assert cfg.gradient_accumulation_steps == 4


def test_unusable_training_sets_are_refused_before_any_worker_starts(tmp_path):
    from adamllm_ray.training.trainer import TrainError, prepare

    def cfg(path, **extra):
        return TrainConfig.model_validate({"model": "m", "output": str(tmp_path / "o"), "data": {"path": str(path)},
                                           "global_batch_size": 4, "micro_batch_size": 1, **extra})

    with pytest.raises(TrainError, match="training set: no such file or folder"):
        prepare(cfg(tmp_path / "nowhere.json"))
    (tmp_path / "broken.json").write_text('[{"images": [')
    with pytest.raises(TrainError, match="broken.json: not valid JSON"):
        prepare(cfg(tmp_path / "broken.json"))
    small = write_training_set(tmp_path / "small", 3)
    with pytest.raises(TrainError, match="gives 3 examples, fewer than one global batch of 4"):
        prepare(cfg(small))
    plan, examples, total = prepare(cfg(small, epochs=3, max_steps=1))
    assert (len(plan.examples), len(examples), total) == (9, 9, 1)


# ---------------------------------------------------------------- with Ray


def training_set(root: Path, n: int, bad: bool = False) -> str:
    """n good examples; with `bad`, first (in file order): a missing image, a corrupt image, a
    conversation longer than max_length (truncated), and an entry with no assistant turn."""
    path = Path(write_training_set(root, n, seed=0))
    if bad:
        entries = json.loads(path.read_text())
        (root / "images" / "corrupt.png").write_bytes(b"not an image at all")
        good = entries[0]
        entries[:0] = [
            {"id": "missing", "images": ["images/nope.png"], "messages": good["messages"]},
            {"id": "corrupt", "images": ["images/corrupt.png"], "messages": good["messages"]},
            {"id": "long", "images": good["images"], "messages": [
                {"role": "user", "content": "<image>\nDescribe the image."},
                {"role": "assistant", "content": CAPTION * 12}]},
            {"id": "no-answer", "images": good["images"], "messages": [{"role": "user", "content": "<image>\nHi"}]},
        ]
        path.write_text(json.dumps(entries))
    return str(path)


def test_ray_data_stage_counts_bad_rows(ray_local, tiny_qwen2_vl, tmp_path):
    cfg = TrainDataConfig(path=training_set(tmp_path, 6, bad=True), max_length=160, shuffle=False)
    p = data.plan(data.read_entries(cfg), cfg, epochs=1)
    assert p.skipped == {"no_assistant_turn": 1} and len(p.examples) == 9
    rows = data.build_dataset(p.examples, tiny_qwen2_vl, "qwen2_vl", cfg).take_all()
    assert sorted(r["position"] for r in rows) == list(range(9))
    by_id = {r["id"]: r for r in rows}
    assert by_id["missing"]["skip"] == "missing_image" and "images/nope.png" in by_id["missing"]["skip_message"]
    assert by_id["corrupt"]["skip"] == "bad_image" and "not an image" in by_id["corrupt"]["skip_message"]
    assert by_id["long"]["truncated"] and by_id["long"]["num_tokens"] == 160
    good = [r for r in rows if r["skip"] is None]
    assert len(good) == 7 and sum(r["truncated"] for r in good) == 1
    assert all(masks.unpack(r)["labels"].shape == masks.unpack(r)["input_ids"].shape for r in good)


def write_job(tmp_path: Path, name: str, body: dict) -> Path:
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(f"# adamllm train --config {path}\n" + yaml.safe_dump(body))
    return path


def tiny_job(model: str, train_json: str, output: str, name: str, **extra) -> dict:
    job = {"model": model, "family": "qwen2_vl", "output": output, "name": name,
           "data": {"path": train_json, "max_length": 160, "shuffle": False},
           "scaling": {"num_workers": 2, "cpus_per_worker": 1}, "zero_stage": 2, "precision": "fp32",
           "global_batch_size": 4, "micro_batch_size": 1,
           "optim": {"lr": 1e-3, "weight_decay": 0.1, "warmup_ratio": 0.1},
           "checkpoint": {"every_steps": 3, "num_to_keep": None}}
    for key, value in extra.items():
        job[key] = {**job[key], **value} if isinstance(value, dict) and key in job else value
    return job


@pytest.fixture(scope="module")
def zero2_run(ray_local, tiny_qwen2_vl, tmp_path_factory):
    """`adamllm train` on 40 good examples and 4 bad ones, ZeRO-2, local storage, 8 steps of 4."""
    root = tmp_path_factory.mktemp("zero2")
    train_json = training_set(root / "data", 40, bad=True)
    job = tiny_job(tiny_qwen2_vl, train_json, str(root / "runs"), "zero2", max_steps=8)
    assert cli_main(["train", "--config", str(write_job(root, "zero2", job))]) == 0
    run_dir = root / "runs" / "zero2"
    return {"root": root, "job": job, "run_dir": run_dir,
            "summary": json.loads((run_dir / "summary.json").read_text())}


def test_zero2_trains_and_counts_bad_input(zero2_run):
    s = zero2_run["summary"]
    losses = [h["loss"] for h in s["history"]]
    assert s["steps"] == s["steps_planned"] == 8
    assert [h["step"] for h in s["history"]] == list(range(1, 9))
    assert losses[-1] < 0.85 * losses[0] and sum(losses[-2:]) < sum(losses[:2])
    assert s["data"]["skipped_entries"] == {"no_assistant_turn": 1}
    assert s["examples_skipped"] == {"missing_image": 1, "bad_image": 1}
    assert s["examples_truncated"] == 1
    assert s["examples_trained"] == 32 and s["started_from_step"] == 0


def test_zero2_checkpoints_land_in_local_storage(zero2_run):
    run_dir = zero2_run["run_dir"]
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == ["checkpoint_00000003", "checkpoint_00000006",
                                                                   "checkpoint_00000008"]
    ckpt = run_dir / "checkpoint_00000006"
    assert json.loads((ckpt / "train_state.json").read_text())["step"] == 6
    assert {p.name for p in (ckpt / "state").iterdir()} == {
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    assert (ckpt / "hf" / "config.json").exists() and (ckpt / "hf" / "tokenizer.json").exists()
    assert (run_dir / "model" / "model.safetensors").exists()


def test_new_run_starts_from_a_given_checkpoint(zero2_run, tmp_path):
    """Weights, optimizer, scheduler, step and data position come from the checkpoint."""
    first = zero2_run["summary"]
    ckpt = zero2_run["run_dir"] / "checkpoint_00000003"
    state3 = TrainState.from_json((ckpt / "train_state.json").read_text())
    job = {**zero2_run["job"], "name": "from3", "output": str(tmp_path / "runs"), "resume_from": str(ckpt),
           "export": False}
    assert cli_main(["train", "--config", str(write_job(tmp_path, "from3", job))]) == 0
    s = json.loads((tmp_path / "runs" / "from3" / "summary.json").read_text())
    assert s["started_from_step"] == 3 and s["steps"] == 8
    assert s["history"][:3] == first["history"][:3]  # carried over, not re-run
    assert [h["step"] for h in s["history"]] == list(range(1, 9))
    assert [h["lr"] for h in s["history"]] == [h["lr"] for h in first["history"]]  # the schedule goes on
    assert s["history"][3]["loss"] < 0.95 * first["history"][0]["loss"]  # trained weights, not the base model
    final = TrainState.from_json((tmp_path / "runs" / "from3" / "checkpoint_00000008" / "train_state.json").read_text())
    assert final.next_position > state3.next_position and s["examples_trained"] == 32


def test_a_build_killed_midway_leaves_no_lock_that_hangs_later_runs(tmp_path):
    """A process killed while compiling DeepSpeed's CPU collectives op leaves torch's lock file in the build
    folder; the next training worker's build goes on (it would otherwise wait on that file forever)."""
    import shutil
    import subprocess
    import sys

    from torch.utils.cpp_extension import _get_build_directory

    build = tmp_path / "ext" / "deepspeed_shm_comm"
    built = Path(_get_build_directory("deepspeed_shm_comm", verbose=False))
    if (built / "deepspeed_shm_comm.so").is_file():  # this machine's build: up to date, nothing to compile
        shutil.copytree(built, build, ignore=shutil.ignore_patterns("*.flock", "lock"))
    build.mkdir(parents=True, exist_ok=True)
    (build / "lock").touch()  # what a SIGKILL mid-compile leaves
    load = ("from adamllm_ray.training.loop import build_cpu_comm_op; build_cpu_comm_op(); "
            "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; "
            "print('loaded:', 'deepspeed_shm_comm' in ShareMemCommBuilder._loaded_ops)")
    out = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loaded: True" in out.stdout
    assert not (build / "lock").exists() and (build / "deepspeed_shm_comm.so").is_file()


def test_killed_worker_is_replaced_and_training_resumes(ray_local, tiny_qwen2_vl, tmp_path):
    """Rank 1's process is killed once Ray Train has registered a checkpoint; the worker group is
    restarted (max_failures=1) and goes on from the latest registered checkpoint."""
    train_json = training_set(tmp_path / "data", 24)
    run_dir = tmp_path / "runs" / "killed"
    job = tiny_job(tiny_qwen2_vl, train_json, str(tmp_path / "runs"), "killed", epochs=7, max_steps=40,
                   max_failures=1, export=False, checkpoint={"every_steps": 4})
    killed = {}

    def kill_rank_1():
        snapshot = run_dir / "checkpoint_manager_snapshot.json"  # written when Ray registers a checkpoint
        deadline = time.time() + 240
        while time.time() < deadline:
            registered = sorted(run_dir.glob("checkpoint_0*/train_state.json"))
            if snapshot.exists() and registered and registered[0].parent.name in snapshot.read_text():
                pid = json.loads(registered[0].read_text())["worker_pids"][1]
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    assert cli_main(["train", "--config", str(write_job(tmp_path, "killed", job))]) == 0
    killer.join(timeout=1)
    assert "pid" in killed, "the run ended before a worker could be killed"
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["attempts"] == 2 and s["started_from_step"] > 0 and s["started_from_step"] % 4 == 0
    assert s["steps"] == 40 and [h["step"] for h in s["history"]] == list(range(1, 41))
    final = TrainState.from_json((run_dir / "checkpoint_00000040" / "train_state.json").read_text())
    assert killed["pid"] not in final.worker_pids and final.attempts == 2


@pytest.fixture(scope="module")
def zero3_s3_run(ray_local, s3_endpoint, tiny_qwen2_vl, tmp_path_factory):
    """ZeRO-3 with checkpoints and the export on S3 (moto), through the Python entry point."""
    import boto3

    from adamllm_ray.training import trainer

    bucket = f"adamllm-train-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("zero3")
    # no warmup: in six steps ceil(0.1 x 6) = 1 warmup step would train at lr 0 (the schedule starts from 0)
    job = tiny_job(tiny_qwen2_vl, training_set(root / "data", 24), f"s3://{bucket}/runs", "zero3", zero_stage=3,
                   epochs=2, max_steps=6, optim={"warmup_ratio": 0.0})
    summary = trainer.run(TrainConfig.model_validate(job))
    keys = {o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}
    local = root / "model"
    for key in keys:
        if key.startswith("runs/zero3/model/"):
            (local / key[len("runs/zero3/model/"):]).parent.mkdir(parents=True, exist_ok=True)
            (local / key[len("runs/zero3/model/"):]).write_bytes(storage.read_bytes(f"s3://{bucket}/{key}"))
    return {"summary": summary, "keys": keys, "model": str(local)}


def test_zero3_trains_with_checkpoints_on_s3(zero3_s3_run):
    s, keys = zero3_s3_run["summary"], zero3_s3_run["keys"]
    losses = [h["loss"] for h in s["history"]]
    assert s["steps"] == 6 and losses[-1] < 0.85 * losses[0]
    for step in ("00000003", "00000006"):
        for name in ("train_state.json", "latest", "hf/config.json", *(
                f"state/zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in ("model", "optim"))):
            assert f"runs/zero3/checkpoint_{step}/{name}" in keys, name
    assert {"runs/zero3/model/model.safetensors", "runs/zero3/model/config.json",
            "runs/zero3/model/tokenizer.json", "runs/zero3/summary.json"} <= keys
    assert s["checkpoint"].startswith("s3://") and s["model"].startswith("s3://")


def greedy_transformers(model_dir: str, images: list, n: int) -> tuple[str, list[list[int]]]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    assert type(proc).__name__ == "Qwen2VLProcessor"
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = proc.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    out = []
    for img in images:
        inputs = proc(text=[prompt], images=[img], return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        out.append(ids[0, inputs["input_ids"].shape[1]:].tolist())
    return prompt, out


def test_export_loads_in_transformers_and_vllm(zero3_s3_run, tiny_qwen2_vl):
    from safetensors.torch import load_file
    from vllm import LLM, SamplingParams

    model_dir = zero3_s3_run["model"]
    trained, base = load_file(f"{model_dir}/model.safetensors"), load_file(f"{tiny_qwen2_vl}/model.safetensors")
    assert set(trained) == set(base)  # the layout transformers and vLLM read
    assert all(not (trained[k] == base[k]).all() for k in base)  # every tensor was trained
    images = [Image.new("RGB", (96, 64), (200, 30, 30)), Image.new("RGB", (64, 112), (20, 30, 230))]
    prompt, expected = greedy_transformers(model_dir, images, 6)
    assert [len(e) for e in expected] == [6, 6]
    llm = LLM(model_dir, dtype="float32", max_model_len=1024, enforce_eager=True, limit_mm_per_prompt={"image": 1},
              seed=0)
    outs = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": i}} for i in images],
                        SamplingParams(temperature=0, max_tokens=6, min_tokens=6))
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    del llm


def test_gpu_request_without_gpus_fails_fast(ray_local, tiny_qwen2_vl, tmp_path, capsys):
    job = tiny_job(tiny_qwen2_vl, training_set(tmp_path / "data", 4), str(tmp_path / "runs"), "gpu")
    path = write_job(tmp_path, "gpu", job)
    assert cli_main(["train", "--config", str(path), "scaling.use_gpu=true"]) == 1  # refused before any trainer
    err = capsys.readouterr().err
    assert "2 GPU worker(s)" in err and "has 0 GPU(s)" in err and "scaling.use_gpu=false" in err
    assert not (tmp_path / "runs").exists()
