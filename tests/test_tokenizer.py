"""Tokenizers: the built-in character tokenizer and the `tokenizer.json` wrapper."""

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl_llm.data.tokenizer import CHAR_ALPHABET, CharTokenizer, HFTokenizer, Tokenizer


def test_char_tokenizer_ids_are_fixed():
    tok = CharTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 3 + 10 + 52 + len(string.punctuation) + 2 == 99
    # digits come first after the specials, so "0" is 3 and "9" is 12
    assert tok.encode("0129") == [3, 4, 5, 12]
    assert tok.encode("a") == [13]
    assert tok.encode("\n") == [98]
    # string.punctuation starts !"#$%&'()*+ so "+" is its 11th character and "=" its 19th
    plus, equals = 3 + 62 + 10, 3 + 62 + 18
    assert tok.encode("12+3=", add_bos=True, add_eos=True) == [1, 4, 5, plus, 6, equals, 2]


def test_char_tokenizer_satisfies_protocol():
    assert isinstance(CharTokenizer(), Tokenizer)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.text(alphabet=CHAR_ALPHABET, max_size=40))
def test_char_round_trip(text):
    tok = CharTokenizer()
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_char_decode_keeps_specials_on_request():
    tok = CharTokenizer()
    assert tok.decode([1, 4, 2, 0], skip_special=False) == "<bos>1<eos><pad>"


def test_char_unknown_character_names_it():
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\) at position 2"):
        CharTokenizer().encode("abé")


def test_char_decode_rejects_out_of_range_id():
    with pytest.raises(ValueError, match="id 99 is outside"):
        CharTokenizer().decode([99])


def _build_word_level(tmp_path, with_config: bool):
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models, pre_tokenizers

    words = ["[UNK]", "<pad>", "<s>", "</s>", "the", "cat", "sat", "=", "7"]
    vocab = {w: i for i, w in enumerate(words)}
    raw = RawTokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens(["<pad>", "<s>", "</s>"])
    path = tmp_path / "tokenizer.json"
    raw.save(str(path))
    if with_config:
        config = {"eos_token": {"content": "<s>"}, "pad_token": "</s>"}
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_hf_word_level_round_trip(tmp_path):
    path = _build_word_level(tmp_path, with_config=False)
    tok = HFTokenizer.from_file(path)
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 9
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (1, 2, 3)
    ids = tok.encode("the cat sat")
    assert ids == [4, 5, 6]
    assert tok.encode("cat = 7", add_bos=True, add_eos=True) == [2, 5, 7, 8, 3]
    assert tok.decode([2, 4, 5, 6, 3]) == "the cat sat"
    assert tok.decode([4, 3], skip_special=False) == "the </s>"


def test_hf_loads_directory_and_reads_tokenizer_config(tmp_path):
    _build_word_level(tmp_path, with_config=True)
    tok = HFTokenizer.from_file(tmp_path)
    # tokenizer_config.json overrides the built-in guesses
    assert tok.eos_id == 2
    assert tok.pad_id == 3


def _train_bpe(tmp_path):
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(["12+345=357", "the answer is 42", "2*3=6"] * 20, trainer=trainer)
    raw.save(str(tmp_path / "tokenizer.json"))
    return tmp_path / "tokenizer.json"


def test_hf_bpe_round_trip(tmp_path):
    tok = HFTokenizer.from_file(_train_bpe(tmp_path))
    assert tok.eos_id == tok.pad_id == 0
    assert tok.bos_id is None
    text = "12+345=357 and é!"
    assert tok.decode(tok.encode(text, add_eos=True)) == text
    with pytest.raises(ValueError, match="no bos token"):
        tok.encode("x", add_bos=True)


def test_hf_matches_transformers_fast_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = _train_bpe(tmp_path)
    ours = HFTokenizer.from_file(path)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in ["12+345=357", "the answer is 42!", " 2*3 = 6\n", "unseen wörds"]:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ids + [ours.eos_id]) == theirs.decode(
            ids + [ours.eos_id], skip_special_tokens=True
        )


def test_hf_missing_named_token_fails(tmp_path):
    path = _build_word_level(tmp_path, with_config=False)
    with pytest.raises(ValueError, match="eos_token '<eos>' is not in the tokenizer vocabulary"):
        HFTokenizer.from_file(path, eos_token="<eos>")


def test_hf_missing_file_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer.from_file(tmp_path / "nope.json")
