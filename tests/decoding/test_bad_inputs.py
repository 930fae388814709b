"""Inputs that used to decode silently wrong: each is now rejected with a message saying what to pass, or supported.

One test per row of docs/bad_inputs.md (the NaN-logits row is tested with generate's other tests).
"""

import jax
import numpy as np
import pytest

from tokjax import Model, generate
from tokjax import logits as L
from tokjax.decoding._inputs import check_key, prepare_prompt
from tests.model._models import small_model

MODEL = small_model(seed=5)
CFG = MODEL.cfg
V = CFG.vocab_size
GREEDY = dict(max_new_tokens=4, logits=L.greedy())


def _gen(prompt, **kw):
    return generate(MODEL, prompt, **{**GREEDY, **kw})


# ------------------------------------------------------------------ token ids that are not integers
@pytest.mark.parametrize("prompt", [[[1.7, 2.2]], [1.7, 2.2], np.array([[1.0, 2.0]]), [[1, 2], [3.5]]])
def test_float_token_ids_are_rejected(prompt):
    # Before: np.asarray(r, np.int64) truncated [[1.7, 2.2]] to [[1, 2]] and decoded that.
    with pytest.raises(ValueError, match="token ids must be integers, got floating-point values"):
        _gen(prompt)


@pytest.mark.parametrize("prompt", [[[True, False]], [1, True], np.array([[True, True]])])
def test_bool_token_ids_are_rejected(prompt):
    # Before: bools ran as ids 0 and 1 (a mask passed by mistake decoded as a prompt).
    with pytest.raises(ValueError, match="bool"):
        _gen(prompt)


def test_strings_are_rejected_with_a_hint():
    with pytest.raises(ValueError, match=r"tokenizer\.encode"):
        _gen("hello")


# ------------------------------------------------------------------ empty prompts
def test_empty_prompt_list():
    # Before: "prompt token ids must be integers, got dtype float64" (np.asarray([]) is float).
    with pytest.raises(ValueError, match=r"prompt is empty \(\[\]\); pass at least one row"):
        _gen([])


@pytest.mark.parametrize("prompt, row", [([[]], 0), ([[1, 2], []], 1)])
def test_empty_prompt_row(prompt, row):
    # Before: [[]] read as lengths [0] and failed with "prompt lengths must lie in [1, 1]".
    with pytest.raises(ValueError, match=rf"prompt row {row} is empty; every row needs at least one token"):
        _gen(prompt)


@pytest.mark.parametrize("prompt", [np.zeros((0, 3), np.int32), np.zeros((2, 0), np.int32)])
def test_empty_prompt_array(prompt):
    with pytest.raises(ValueError, match="no rows|rows are empty"):
        _gen(prompt)


# ------------------------------------------------------------------ left padding
ROWS = [[7, 8, 9, 10, 11], [12, 13], [14, 15, 16]]
PAD = 0


def _left_padded(rows, pad=PAD):
    width = max(map(len, rows))
    arr = np.full((len(rows), width), pad, np.int32)
    for b, r in enumerate(rows):
        arr[b, width - len(r):] = r
    return arr


def test_left_padded_array_without_padding_side_is_rejected():
    # Before: the leading pad ids were decoded as part of the prompt (every row full width).
    with pytest.raises(ValueError, match=r'looks left-padded.*padding_side="left"'):
        _gen(_left_padded(ROWS))


def test_left_padded_array_with_right_lengths_is_rejected():
    # Before: prompt_lengths [5, 2, 3] read the first ids of each row, i.e. the padding.
    with pytest.raises(ValueError, match=r'prompt row 1: prompt_lengths says.*padding_side="left"'):
        _gen(_left_padded(ROWS), prompt_lengths=[5, 2, 3])


def test_right_padded_array_with_left_side_is_rejected():
    arr = np.zeros((3, 5), np.int32)
    for b, r in enumerate(ROWS):
        arr[b, : len(r)] = r
    with pytest.raises(ValueError, match=r'looks right-padded.*padding_side="right"'):
        _gen(arr, prompt_lengths=[5, 2, 3], padding_side="left")
    with pytest.raises(ValueError, match=r"attention mask row 1 is right-padded.*padding_side='right'"):
        _gen(arr, prompt_lengths=arr != 0, padding_side="left")


@pytest.mark.parametrize("how", ["pad run", "lengths", "attention mask"])
def test_left_padding_is_supported(how):
    left = _left_padded(ROWS)
    kw = {"pad run": {}, "lengths": dict(prompt_lengths=[5, 2, 3]), "attention mask": dict(prompt_lengths=left != PAD)}
    out = _gen(left, padding_side="left", **kw[how])
    ref = _gen(ROWS)
    np.testing.assert_array_equal(out.prompt_lengths, [5, 2, 3])
    for got, want in zip(out.completions(), ref.completions()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out.tokens, ref.tokens)


def test_left_padding_layout_and_its_own_errors():
    left = _left_padded(ROWS, pad=3)
    tokens, lens = prepare_prompt(left, None, CFG, 3, padding_side="left")
    right, rlens = prepare_prompt(ROWS, None, CFG, 3)
    np.testing.assert_array_equal(tokens, right)
    np.testing.assert_array_equal(lens, rlens)
    with pytest.raises(ValueError, match="prompt row 1 is all padding"):
        prepare_prompt(np.array([[1, 2], [3, 3]]), None, CFG, 3, padding_side="left")
    with pytest.raises(ValueError, match="not one contiguous run"):
        prepare_prompt(left, np.array([[1, 0, 1, 1, 1]] * 3), CFG, 3, padding_side="left")
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        prepare_prompt(left, None, CFG, 3, padding_side="center")
    # Equal-width lists are padded arrays too; ragged lists have no padding to remove.
    np.testing.assert_array_equal(prepare_prompt(left.tolist(), None, CFG, 3, padding_side="left")[0], right)
    with pytest.raises(ValueError, match=r"rows have different lengths \(\[2, 3\]\)"):
        prepare_prompt([[3, 5], [1, 2, 4]], None, CFG, 3, padding_side="left")


def test_pad_id_as_real_token_has_an_escape_hatch():
    """A row really starting with the pad id passes when prompt_lengths states the lengths, or when pad_id
    also occurs inside a row (then the leading runs are not padding)."""
    arr = np.array([[0, 0, 5, 6], [7, 8, 9, 10]], np.int32)
    with pytest.raises(ValueError, match="left-padded"):
        prepare_prompt(arr, None, CFG, 0)
    tokens, lens = prepare_prompt(arr, [4, 4], CFG, 0)
    np.testing.assert_array_equal(tokens, arr)
    inner = np.array([[0, 5, 0, 6], [7, 8, 9, 10]], np.int32)
    np.testing.assert_array_equal(prepare_prompt(inner, None, CFG, 0)[0], inner)
    # A right-padded row really starting with pad_id: ambiguous while stale ids follow its length, fine once
    # it is padded with pad_id, and fine in a batch where another padded row starts with a real token.
    stale = np.array([[0, 4, 4, 9], [7, 8, 9, 10]], np.int32)
    with pytest.raises(ValueError, match="fill it with pad_id after its length"):
        prepare_prompt(stale, [3, 4], CFG, 0)
    np.testing.assert_array_equal(prepare_prompt(np.array([[0, 4, 4, 0], [7, 8, 9, 10]]), [3, 4], CFG, 0)[1], [3, 4])
    mixed = np.array([[0, 4, 4, 9], [7, 8, 9, 10], [5, 6, 1, 1]], np.int32)
    np.testing.assert_array_equal(prepare_prompt(mixed, [3, 4, 2], CFG, 0)[1], [3, 4, 2])


def test_prompt_lengths_must_be_integers():
    # Before: np.asarray([2.7, 3], np.int32) truncated to [2, 3].
    with pytest.raises(ValueError, match="prompt_lengths must be integers"):
        _gen(np.ones((2, 3), np.int32), prompt_lengths=[2.7, 3])


# ------------------------------------------------------------------ key
@pytest.mark.parametrize("key, match", [
    (0, r"got int 0; pass key=jax\.random\.key\(seed\)"),
    (1.5, "got float"),
    (np.array([0, 1]), r"dtype int64 and shape \(2,\)"),
    (jax.random.split(jax.random.key(0), 3), r"single key \(shape \(\)\)"),
    ("seed", "got str"),
])
def test_non_key_is_rejected(key, match):
    # Before: key=0 failed deep inside jax.random.split in the traced loop.
    with pytest.raises(ValueError, match=match):
        _gen([[1, 2]], key=key, logits=L.temperature(1.0))


def test_legacy_uint32_key_is_accepted_and_draws_the_same_bits():
    raw = jax.random.PRNGKey(3)
    typed = check_key(raw)
    assert jax.dtypes.issubdtype(typed.dtype, jax.dtypes.prng_key) and typed.shape == ()
    np.testing.assert_array_equal(jax.random.key_data(typed), raw)
    a = _gen([[1, 2, 3]], key=raw, logits=L.temperature(1.0), max_new_tokens=6)
    b = _gen([[1, 2, 3]], key=jax.random.wrap_key_data(raw), logits=L.temperature(1.0), max_new_tokens=6)
    np.testing.assert_array_equal(a.tokens, b.tokens)


# ------------------------------------------------------------------ Model built with swapped arguments
def test_model_with_swapped_arguments():
    with pytest.raises(ValueError, match=r"got a ModelConfig as params: the arguments are swapped"):
        Model(CFG, MODEL.params)
    with pytest.raises(ValueError, match="needs a ModelConfig as cfg"):
        Model(MODEL.params, MODEL.params)
    with pytest.raises(ValueError, match="the arguments are swapped"):
        Model.init(jax.random.key(0), CFG)


# ------------------------------------------------------------------ NaN logits (implemented in the driver)
def test_nan_logits_are_an_error_or_a_stat_not_a_banned_row():
    # Before: NaN logits ended the row as if every token were banned (stats["masked_rows"]).
    params = jax.tree.map(lambda x: x, MODEL.params)
    params["final_norm"]["scale"] = params["final_norm"]["scale"].at[0].set(np.nan)
    broken = Model(params, CFG)
    with pytest.raises(ValueError, match="non-finite logits"):
        generate(broken, [[1, 2], [3]], **GREEDY)
    out = generate(broken, [[1, 2], [3]], on_nan="stop", **GREEDY)
    assert list(out.stats["nan_rows"]) == [True, True] and not any(out.stats["masked_rows"])
    np.testing.assert_array_equal(out.lengths, out.prompt_lengths)  # nothing was committed from NaN logits
