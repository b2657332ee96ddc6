"""Two skill fine-tunes of one tiny Hugging Face base, with item files that score them.

Causal LMs (:func:`lm_pair`): a 2-layer Llama over :func:`tests.lm_tiny.char_tokenizer`, the base
trained briefly on both skills, then one fine-tune per skill (``up``: ``"u abh="`` -> ``"bca"``, each
letter shifted forward in ``a..h``; ``down``: ``"d abh="`` -> ``"hag"``, shifted back). Items: a multiple-choice file (which continuation follows the
prompt) and a generation file (greedy answer up to the newline), both mixing the skills.

Encoders (:func:`encoder_pair`): a 2-layer BERT sequence classifier, fine-tuned per skill on
``"has a digit"`` and ``"starts with a vowel"`` labels of short words; one text classification file
whose label is the skill's answer for items tagged with that skill.

Everything is seeded; on one thread the same seed gives the same folders.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import torch

from tests.lm_tiny import tiny_bert_classifier, tiny_llama

LETTERS = "abcdefgh"


def shift(word: str, k: int) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + k) % len(LETTERS)] for c in word)


SKILLS = {"up": ("u", 1), "down": ("d", -1)}


def _words(seed: int) -> tuple[list[str], list[str]]:
    """The 512 three-letter words over ``a..h``, shuffled: 256 to train on, 256 held out for items."""
    words = ["".join(w) for w in itertools.product(LETTERS, repeat=3)]
    random.Random(seed).shuffle(words)
    return words[:256], words[256:]


def _lm_texts(skill: str, words: list[str]) -> list[str]:
    tag, k = SKILLS[skill]
    return [f"{tag} {w}={shift(w, k)}\n" for w in words]


def _train(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], steps: int, lr: float, seed: int, loss_of) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        loss_of(model, batches[step % len(batches)]).backward()
        opt.step()
    model.eval()


def _lm_batches(tok, texts: list[str], size: int = 32) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(0, len(texts), size):
        enc = tok(texts[i : i + size], return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        out.append({**enc, "labels": labels})
    return out


def _lm_loss(model, batch):
    return model(**batch).loss


def lm_pair(root: Path, seed: int = 0, steps: int = 300, items: int = 24) -> dict[str, Path]:
    """``root/{base,up,down}`` (model + tokenizer) and ``root/{mc,gen}.jsonl`` (``items`` each); returns the paths."""
    if not 0 < items <= 256:
        raise ValueError(f"items: 1 to 256 held-out words, got {items}")
    model, tok = tiny_llama(seed=seed, max_positions=64)
    tok.padding_side = "right"
    words, held_out = _words(seed)
    mixed = [t for pair in zip(*(_lm_texts(skill, words) for skill in SKILLS)) for t in pair]
    _train(model, _lm_batches(tok, mixed), steps, 1e-2, seed, _lm_loss)
    paths = {"base": root / "base"}
    model.save_pretrained(paths["base"])
    tok.save_pretrained(paths["base"])
    for k, skill in enumerate(SKILLS):
        ft, _ = tiny_llama(seed=seed, max_positions=64)
        ft.load_state_dict(model.state_dict())
        _train(ft, _lm_batches(tok, _lm_texts(skill, words)), steps // 2, 2e-3, seed + 1 + k, _lm_loss)
        paths[skill] = root / skill
        ft.save_pretrained(paths[skill])
        tok.save_pretrained(paths[skill])
    test_words = held_out[:items]
    paths["mc"], paths["gen"] = root / "mc.jsonl", root / "gen.jsonl"
    with paths["mc"].open("w") as mc, paths["gen"].open("w") as gen:
        for i, w in enumerate(test_words):
            tag, k = SKILLS[list(SKILLS)[i % 2]]
            choices = [shift(w, k), shift(w, -k), shift(w, 2 * k), w]
            mc.write(json.dumps({"id": f"mc-{i}", "question": f"{tag} {w}=", "choices": choices, "answer": 0}) + "\n")
            gen.write(json.dumps({"prompt": f"{tag} {w}=", "target": shift(w, k)}) + "\n")
    return paths


VOWELS = set("aeiou")
CLASS_SKILLS = {"digit": lambda w: int(any(c.isdigit() for c in w)), "vowel": lambda w: int(w[0] in VOWELS)}


def _class_words(rng: random.Random, n: int) -> list[str]:
    alphabet = "abcdeiou0123"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 6))) for _ in range(n)]


def encoder_pair(root: Path, seed: int = 0, steps: int = 40) -> dict[str, Path]:
    """``root/{base,digit,vowel}`` (BERT classifiers + tokenizer) and ``root/cls.jsonl``."""
    rng = random.Random(seed)
    base, tok = tiny_bert_classifier(num_labels=2, seed=seed)
    words = _class_words(rng, 256)

    def batches(skill: str) -> list[dict[str, torch.Tensor]]:
        out = []
        for i in range(0, len(words), 32):
            chunk = words[i : i + 32]
            enc = tok([f"{skill[0]} {w}" for w in chunk], return_tensors="pt", padding=True)
            out.append({**enc, "labels": torch.tensor([CLASS_SKILLS[skill](w) for w in chunk])})
        return out

    paths = {"base": root / "base"}
    base.save_pretrained(paths["base"])
    tok.save_pretrained(paths["base"])
    for k, skill in enumerate(CLASS_SKILLS):
        ft, _ = tiny_bert_classifier(num_labels=2, seed=seed)
        ft.load_state_dict(base.state_dict())
        _train(ft, batches(skill), steps, 3e-3, seed + 1 + k, _lm_loss)
        paths[skill] = root / skill
        ft.save_pretrained(paths[skill])
        tok.save_pretrained(paths[skill])
    paths["cls"] = root / "cls.jsonl"
    with paths["cls"].open("w") as f:
        for i, w in enumerate(_class_words(random.Random(seed + 100), 32)):
            skill = list(CLASS_SKILLS)[i % 2]
            f.write(json.dumps({"text": f"{skill[0]} {w}", "label": CLASS_SKILLS[skill](w)}) + "\n")
    return paths

