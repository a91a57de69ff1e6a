"""The word-level tokenizer built from a task's texts (data.tokenizer = "word")."""

import pytest
from ml_collections import ConfigDict

from jaxrl_llm.data.word_tokenizer import SPECIAL_TOKENS, word_pieces, word_tokenizer
from jaxrl_llm.train.builders import build_tokenizer


def test_pieces_keep_their_leading_space_and_join_back():
    text = "go to cabinet 1\nclick[P037] $15."
    assert word_pieces(text) == ["go", " to", " cabinet", " 1", "\nclick", "[", "P037", "]", " $", "15", "."]
    assert "".join(word_pieces(text)) == text


def test_ids_are_specials_then_pieces_by_count_and_roundtrip():
    tok = word_tokenizer(["go to fridge", "go to shelf", "go"])
    # "go" x3, " to" x2, then " fridge" / " shelf" once each in lexicographic order
    assert [tok.encode(p)[0] for p in ("go", " to", " fridge", " shelf")] == [4, 5, 6, 7]
    assert tok.vocab_size == len(SPECIAL_TOKENS) + 4
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.encode_prompt("go to shelf") == [1, 4, 5, 7]
    assert tok.encode_response("go to fridge") == [4, 5, 6, 2]
    assert tok.decode(tok.encode("go to fridge to shelf")) == "go to fridge to shelf"
    assert tok.encode("go to the moon") == [4, 5, 3, 3]  # unknown pieces are <unk>
    assert word_tokenizer(["b a", "a b"]).encode("a") == word_tokenizer(["a b", "b a"]).encode("a")


def test_max_size_keeps_the_most_frequent_pieces():
    tok = word_tokenizer(["a a a b b c"], max_size=6)
    # " a" x2 and " b" x2 are kept (ties in lexicographic order); "a" and " c" (once each) are not
    assert tok.vocab_size == 6 and tok.encode(" a b") == [4, 5] and tok.encode("a c") == [3, 3]
    with pytest.raises(ValueError, match="max_size"):
        word_tokenizer(["a"], max_size=4)


def test_the_agent_task_vocabulary_covers_its_prompts_without_unknowns():
    data = ConfigDict({"task": "agent", "tokenizer": "word", "task_kwargs": {"env": "texthouse", "history_turns": 1}})
    tok = build_tokenizer(data)
    assert build_tokenizer(data) is tok  # cached: every trainer of a run shares one vocabulary
    from jaxrl_llm.train.builders import build_task
    task = build_task(data)
    for r in task.sample_batch(50, 99, "eval"):
        ids = tok.encode_prompt(r.prompt)
        assert 3 not in ids and tok.decode(ids) == r.prompt
    with pytest.raises(ValueError, match="vocabulary_texts"):
        build_tokenizer(ConfigDict({"task": "arithmetic", "tokenizer": "word", "level": 1}))
    with pytest.raises(ValueError, match="chat template"):
        build_tokenizer(ConfigDict({"task": "agent", "tokenizer": "word", "chat": True}))
