"""``scenes:`` and ``captions:`` data: the caption grammar, the drawer, the checker and the caption conditioning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genzoo.data import load_dataset
from genzoo.data.captions import caption_tokens, encode_prompts
from genzoo.data.scenes import (
    PALETTE,
    RELATIONS,
    SHAPES,
    Scene,
    Thing,
    caption,
    caption_accuracy,
    check,
    detect,
    make_scenes,
    parse,
    relation_between,
    shape_mask,
    side,
)
from genzoo.errors import DataError

N = 600


@pytest.fixture(scope="module")
def drawn() -> tuple[np.ndarray, list[str]]:
    return make_scenes(N, 32)


def test_parser_and_checker_agree_with_the_drawer_on_every_example(drawn: tuple[np.ndarray, list[str]]) -> None:
    images, texts = drawn
    for image, text in zip(images, texts, strict=True):
        scene = parse(text)
        assert caption(scene) == text
        assert sorted(f.thing for f in detect(image)) == sorted(scene.things), text
        assert all(v is not False for v in check(image, text).values()), text
    forms = {len(parse(t).things) + (10 if parse(t).relation else 0) for t in texts}
    assert forms == {1, 2, 3, 12}  # single objects, counts of two and three, and relations all occur
    for image, text in zip(*make_scenes(200, 16), strict=True):  # the smallest side that tells shapes apart
        assert check(image, text)["all"], text


def _mutations(scene: Scene) -> dict[str, Scene]:
    """The scene with one attribute changed: first object's colour, shape, size; the relation; the count."""
    first, rest = scene.things[0], scene.things[1:]
    other = lambda value, values: next(v for v in values if v != value)  # noqa: E731
    same = len(set(scene.things)) == 1
    swap = lambda **kw: Thing(**{**first.__dict__, **kw})  # noqa: E731
    out = {}
    for attr, values in (("colour", list(PALETTE)), ("shape", SHAPES), ("size", ("small", "large"))):
        changed = swap(**{attr: other(getattr(first, attr), values)})
        out[attr] = Scene((changed,) * len(scene.things) if same else (changed, *rest), scene.relation)
    if scene.relation:
        opposite = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
        out["relation"] = Scene(scene.things, opposite[scene.relation])
    elif same:
        out["count"] = Scene((first,) * (2 if len(scene.things) == 3 else 3))
    return out


def test_the_checker_rejects_a_caption_with_one_attribute_changed(drawn: tuple[np.ndarray, list[str]]) -> None:
    images, texts = drawn
    for image, text in list(zip(images, texts, strict=True))[:150]:
        for attribute, wrong in _mutations(parse(text)).items():
            verdict = check(image, caption(wrong))
            assert verdict[attribute] is False and verdict["all"] is False, (text, caption(wrong))


def test_relations_are_read_in_image_coordinates(drawn: tuple[np.ndarray, list[str]]) -> None:
    """'A above B': A's pixels have the smaller mean row (y grows downwards); 'left of': the smaller mean column."""
    assert relation_between((5.0, 2.0), (5.0, 10.0)) == "above"
    assert relation_between((1.0, 5.0), (9.0, 4.0)) == "left of"
    assert relation_between((3.0, 3.0), (5.0, 5.0)) is None
    images, texts = drawn
    checked = 0
    for image, text in zip(images, texts, strict=True):
        scene = parse(text)
        if scene.relation is None or scene.things[0].colour == scene.things[1].colour:
            continue
        (ya, xa), (yb, xb) = (np.nonzero(np.all(image == np.array(PALETTE[t.colour])[:, None, None], 0))
                              for t in scene.things)
        dy, dx = ya.mean() - yb.mean(), xa.mean() - xb.mean()
        expected = {"above": dy < 0, "below": dy > 0, "left of": dx < 0, "right of": dx > 0}[scene.relation]
        assert expected, text
        checked += 1
    assert checked > 50


def test_a_single_object_is_drawn_with_its_colour_size_and_shape(drawn: tuple[np.ndarray, list[str]]) -> None:
    assert [(side("small", s), side("large", s)) for s in (32, 24, 16)] == [(7, 11), (5, 9), (5, 7)]
    areas = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
    for shape, share in areas.items():  # the inscribed shapes cover their share of the box (pixel-rounded)
        assert shape_mask(shape, 41, 41).mean() == pytest.approx(share, abs=0.03)
    images, texts = drawn
    for image, text in zip(images, texts, strict=True):
        scene = parse(text)
        if len(scene.things) != 1:
            continue
        thing = scene.things[0]
        lit = image.any(0)
        ys, xs = np.nonzero(lit)
        s = side(thing.size, 32)
        assert (np.ptp(ys) + 1, np.ptp(xs) + 1) == (s, s)
        assert np.array_equal(image[:, lit].T, np.tile(PALETTE[thing.colour], (lit.sum(), 1)))
        box = lit[ys.min() : ys.min() + s, xs.min() : xs.min() + s]
        assert np.array_equal(box, shape_mask(thing.shape, s, s)), text


def test_parse_reads_the_grammar_and_names_what_is_wrong() -> None:
    scene = parse("a small red circle above a large blue square")
    assert scene == Scene((Thing("small", "red", "circle"), Thing("large", "blue", "square")), "above")
    assert parse("three large green triangles") == Scene((Thing("large", "green", "triangle"),) * 3)
    assert parse("a large cyan square left of a small red circle").relation == "left of"
    assert set(RELATIONS) == {"above", "below", "left of", "right of"}
    for bad, why in (("a red circle", "SIZE COLOUR SHAPE"), ("a small pink circle", "unknown colour 'pink'"),
                     ("two small red circle", "plural"), ("a small red circle near a large blue square", "relation"),
                     ("the small red circle", "must start")):
        with pytest.raises(DataError, match=why):
            parse(bad)


def test_caption_accuracy_is_the_share_of_matching_images(drawn: tuple[np.ndarray, list[str]]) -> None:
    images, texts = drawn
    shuffled = texts[1:20] + texts[:1]
    exact = caption_accuracy(torch.from_numpy(images[:20]), texts[:20])
    assert exact["caption_all_accuracy"] == 1.0 and exact["caption_colour_accuracy"] == 1.0
    mixed = caption_accuracy(torch.from_numpy(images[:20]), texts[:10] + shuffled[10:])
    wrong = sum(not check(images[i], shuffled[i])["all"] for i in range(10, 20))
    assert mixed["caption_all_accuracy"] == pytest.approx(1 - wrong / 20)
    blank = caption_accuracy(torch.zeros(2, 3, 32, 32), texts[:2])
    assert blank["caption_count_accuracy"] == 0.0 and blank["caption_all_accuracy"] == 0.0


def test_scenes_loader_splits_tokenizes_and_is_deterministic() -> None:
    data = load_dataset("scenes:#n=50,caption=tokens,image_size=24")
    assert [data.size(s) for s in ("train", "val", "test")] == [40, 5, 5]
    assert data.info.shape == (3, 24, 24) and data.info.levels == 2
    batch = data.examples("test")
    record = data.info.extra["caption"]
    assert batch.cond.dtype == torch.long and batch.cond.shape == (5, record["length"])
    for ids, text in zip(batch.cond.tolist(), data.captions["test"], strict=True):
        words = data.tokenizer.decode([i for i in ids if i not in (record["pad"], record["eos"])])
        assert words == text and ids.count(record["eos"]) == 1
    for image, text in zip(batch.x, data.captions["test"], strict=True):
        assert check(image, text)["all"]
    again = load_dataset("scenes:#n=50,caption=tokens,image_size=24")
    assert torch.equal(again.examples("test").x, batch.x)
    assert load_dataset("scenes:#n=50,caption=none").train.cond is None
    with pytest.raises(DataError, match="caption must be one of"):
        load_dataset("scenes:#caption=pixels")
    with pytest.raises(DataError, match="n must be at least 3"):
        load_dataset("scenes:#n=2")
    with pytest.raises(DataError, match="cannot place"):
        load_dataset("scenes:#n=30,image_size=4,caption=none")


def test_prompts_are_tokenized_like_training_captions() -> None:
    data = load_dataset("scenes:#n=20,caption=tokens")
    ids = encode_prompts(data.info, ["a small red circle"], data.tokenizer)
    assert ids.shape == (1, data.info.extra["caption"]["length"])
    assert torch.equal(ids, caption_tokens(["a small red circle"], data.tokenizer, ids.shape[1]))
    with pytest.raises(DataError, match="lacks: purple"):
        encode_prompts(data.info, ["a small purple circle"], data.tokenizer)
    with pytest.raises(DataError, match="no captions"):
        encode_prompts(load_dataset("scenes:#n=20,caption=none").info, ["a small red circle"])


def _fixture(tmp_path: Path, lines: list[str]) -> Path:
    for i, colour in enumerate(("red", "green", "blue", "yellow")):
        Image.new("RGB", (6, 4), colour).save(tmp_path / f"{i}.png")
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_captions_loader_reads_a_jsonl_file_relative_to_it(tmp_path: Path) -> None:
    lines = [json.dumps({"image": f"{i}.png", "caption": f"a {c}  picture"})
             for i, c in enumerate(("red", "green", "blue", "yellow"))]
    path = _fixture(tmp_path, [*lines, ""])
    data = load_dataset(f"captions:{path}#caption=tokens")
    assert sum(data.size(s) for s in ("train", "val", "test")) == 4 and data.info.shape == (3, 4, 6)
    for split in ("train", "val", "test"):
        for image, text in zip(data.examples(split).x, data.captions[split], strict=True):
            colour = text.split()[1]  # whitespace is normalised; the picture is that colour
            expected = torch.tensor(Image.new("RGB", (1, 1), colour).getpixel((0, 0)), dtype=torch.float32) / 255
            assert torch.allclose(image[:, 0, 0], expected) and text == f"a {colour} picture"
    resized = load_dataset(f"captions:{path}#caption=none,image_size=8")
    assert resized.info.shape == (3, 8, 8) and resized.train.cond is None


@pytest.mark.parametrize(("line", "message"), [
    ('{"image": "missing.png", "caption": "a cat"}', r"captions.jsonl:5: image missing.png not found"),
    ('{"image": "0.png", "caption": ', r"captions.jsonl:5: not valid JSON"),
    ('{"image": "0.png", "text": "a cat"}', r"captions.jsonl:5: expected"),
])
def test_captions_loader_rejects_a_bad_line_naming_it(tmp_path: Path, line: str, message: str) -> None:
    good = [json.dumps({"image": f"{i}.png", "caption": "a picture"}) for i in range(4)]
    path = _fixture(tmp_path, [*good, line])
    with pytest.raises(DataError, match=message):
        load_dataset(f"captions:{path}#caption=none")
