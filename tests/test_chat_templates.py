"""Chat templates: `render_chat` and the tokenizer's prompt / response / conversation layout.

The parity tests build tiny checkpoints carrying the real Qwen2.5-Instruct, Qwen3 and
Llama-3.1-Instruct templates (tests/hf_tiny.py) and compare token for token with
`transformers`' `apply_chat_template`.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from hf_tiny import FAMILIES, chat_template, make_hf_checkpoint
from ml_collections import ConfigDict

from jaxrl_llm.data.chat import ChatTemplateError, render_chat
from jaxrl_llm.data.pipeline import build_sft_dataset, tokenize_record
from jaxrl_llm.data.tokenizer import CharTokenizer, HFTokenizer, Tokenizer, stop_ids_of
from jaxrl_llm.train.builders import build_tokenizer
from jaxrl_llm.train.evaluate import truncate_at_eos, truncate_at_stop

ROOT = Path(__file__).resolve().parents[1]
FAMILY_NAMES = list(FAMILIES)
QUESTION = "What is 12+7? Put the answer in \\boxed{}."
CONVERSATION = [
    {"role": "system", "content": "Solve step by step."},
    {"role": "user", "content": "What is 3?"},
    {"role": "assistant", "content": "3"},  # also in the user turn: the mask must find the assistant's
    {"role": "user", "content": "and 4+4, then times 2?"},
    {"role": "assistant", "content": " 4+4=8, 8*2=16\n#### 16 "},  # edge whitespace: Llama trims it
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> checkpoint folder (tokenizer files only; the model files are tested once below)."""
    return {f: make_hf_checkpoint(tmp_path_factory.mktemp(f), f, with_model=False) for f in FAMILY_NAMES}


@pytest.fixture(scope="module")
def reference(folders):
    transformers = pytest.importorskip("transformers")
    return {f: transformers.AutoTokenizer.from_pretrained(folders[f]) for f in FAMILY_NAMES}


def _their_ids(ref, messages, **kwargs):
    return list(ref.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def _thinking_kwargs(family):
    return [{}, {"enable_thinking": False}, {"enable_thinking": True}] if family == "qwen3" else [{}]


# ---- parity with transformers --------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_rendered_text_matches_transformers(family, folders, reference):
    tok = HFTokenizer.from_file(folders[family], chat=True)
    for kwargs in _thinking_kwargs(family):
        for messages in (CONVERSATION, CONVERSATION[1:2], CONVERSATION[:2]):
            for gen in (True, False):
                theirs = reference[family].apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                                               **kwargs)
                ours = render_chat(chat_template(family), messages, add_generation_prompt=gen,
                                   bos_token=FAMILIES[family]["bos"], eos_token=FAMILIES[family]["eos"], **kwargs)
                assert ours == theirs
                assert HFTokenizer.from_file(folders[family], chat=True, template_kwargs=kwargs).render(
                    messages, add_generation_prompt=gen) == theirs
    assert tok.chat and tok.chat_template == chat_template(family)


@pytest.mark.parametrize("system_prompt", ["", "You are a careful calculator."])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_encode_prompt_matches_apply_chat_template(family, system_prompt, folders, reference):
    for kwargs in _thinking_kwargs(family):
        tok = HFTokenizer.from_file(folders[family], chat=True, system_prompt=system_prompt, template_kwargs=kwargs)
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": QUESTION}]
        ids = tok.encode_prompt(QUESTION)
        assert ids == _their_ids(reference[family], messages, add_generation_prompt=True, **kwargs)
        # Added specials are single tokens, and Llama's post-processor bos is not added a second time.
        text = tok.decode(ids, skip_special=False)
        assert text == reference[family].apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                              **kwargs)
        if family == "llama":
            assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]


def test_qwen3_enable_thinking_switches_the_empty_think_block(folders, reference):
    off = HFTokenizer.from_file(folders["qwen3"], chat=True, template_kwargs={"enable_thinking": False})
    on = HFTokenizer.from_file(folders["qwen3"], chat=True, template_kwargs={"enable_thinking": True})
    default = HFTokenizer.from_file(folders["qwen3"], chat=True)
    think = off.encode("<think>\n\n</think>\n\n")
    assert len(off.encode("<think>")) == 1  # an added (non-special) token, as in Qwen3
    assert off.encode_prompt(QUESTION) == on.encode_prompt(QUESTION) + think
    assert on.encode_prompt(QUESTION) == default.encode_prompt(QUESTION)
    assert on.decode(on.encode_prompt(QUESTION), skip_special=False).endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_encode_messages_ids_and_loss_mask(family, folders, reference):
    tok = HFTokenizer.from_file(folders[family], chat=True)
    ids, mask = tok.encode_messages(CONVERSATION)
    assert ids == _their_ids(reference[family], CONVERSATION)
    assert len(mask) == len(ids) and set(mask) <= {0, 1}
    # The supervised tokens are exactly each assistant content (as rendered) + its end-of-turn token.
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    trim = family == "llama"  # the Llama 3.1 template renders content | trim
    expected = [(m["content"].strip() if trim else m["content"]) + tok.turn_end
                for m in CONVERSATION if m["role"] == "assistant"]
    assert [tok.decode(r, skip_special=False) for r in runs] == expected
    assert tok.turn_end == {"qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "llama": "<|eot_id|>"}[family]


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_prompt_plus_response_is_the_single_turn_conversation(family, folders):
    tok = HFTokenizer.from_file(folders[family], chat=True, system_prompt="Be brief.")
    prompt, response = tok.encode_prompt(QUESTION), tok.encode_response("12+7=19 \\boxed{19}")
    ids, mask = tok.encode_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION},
                                     {"role": "assistant", "content": "12+7=19 \\boxed{19}"}])
    n = len(prompt) + len(response)
    assert ids[:n] == prompt + response
    assert mask[:n] == [0] * len(prompt) + [1] * len(response) and not any(mask[n:])
    assert response[-1] == tok.encode(tok.turn_end)[-1]


def test_qwen3_reasoning_content_is_rendered_outside_the_mask(folders, reference):
    tok = HFTokenizer.from_file(folders["qwen3"], chat=True)
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "reasoning_content": "2 plus 2 is 4"}]
    ids, mask = tok.encode_messages(messages)
    assert ids == _their_ids(reference["qwen3"], messages)
    assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False) == "4<|im_end|>"
    # An earlier turn's <think> block is dropped by the template: its mask covers what is rendered.
    history = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>x</think>4"},
               {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]
    ids, mask = tok.encode_messages(history)
    assert ids == _their_ids(reference["qwen3"], history)
    assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False) == "4<|im_end|>6<|im_end|>"
    # In the last turn the block is rendered from the content itself: it cannot be told apart from it.
    with pytest.raises(ValueError, match="reasoning_content"):
        tok.encode_messages(history[:1] + [{"role": "assistant", "content": "<think>x</think>4"}])


# ---- stop tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_stop_ids_hold_eos_end_of_turn_and_generation_config(family, folders):
    tok = HFTokenizer.from_file(folders[family], chat=True)
    enc = tok.encode
    end_of_turn = enc(tok.turn_end)[-1]
    generation = [enc(t)[0] for t in FAMILIES[family]["generation_eos"]]
    assert tok.stop_ids[0] == tok.eos_id and end_of_turn in tok.stop_ids
    assert set(tok.stop_ids) == {tok.eos_id, end_of_turn, *generation}
    assert len(set(tok.stop_ids)) == len(tok.stop_ids)
    # A generated row is cut at whichever stop id comes first.
    row = enc("19") + [generation[-1]] + enc("junk")
    assert truncate_at_stop(row, tok.stop_ids) == enc("19")
    assert truncate_at_eos(row, eos_id=tok.stop_ids) == enc("19")
    assert stop_ids_of(tok) == tok.stop_ids


def test_generation_config_eos_int_or_list(tmp_path, folders):
    folder = make_hf_checkpoint(tmp_path / "q", "qwen2", with_model=False)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 384}))
    assert HFTokenizer.from_file(folder).stop_ids == (386, 384)  # eos <|im_end|>, then <|endoftext|>
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [384, 385]}))
    assert HFTokenizer.from_file(folder).stop_ids == (386, 384, 385)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id must be an int or a list"):
        HFTokenizer.from_file(folder)


# ---- plain layout unchanged ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_plain_layout_is_bos_prompt_and_response_eos(family, folders):
    tok = HFTokenizer.from_file(folders[family])
    assert not tok.chat and tok.turn_end == ""
    bos = [] if tok.bos_id is None else [tok.bos_id]
    assert tok.encode_prompt(QUESTION) == bos + tok.encode(QUESTION)
    assert tok.encode_response("19") == tok.encode("19") + [tok.eos_id]
    ids, mask = tok.encode_messages([{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}])
    assert ids == bos + tok.encode("1+2=") + tok.encode("3") + [tok.eos_id]
    assert mask == [0] * (len(bos) + len(tok.encode("1+2="))) + [1] * (len(tok.encode("3")) + 1)
    assert tok.stop_ids[0] == tok.eos_id and tok.turn_end == ""


def test_char_tokenizer_plain_layout():
    tok = CharTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.encode_prompt("1+2=") == [1, 4, 75, 5, 83]
    assert tok.encode_response("3") == [6, 2]
    assert tok.stop_ids == (2,)
    ids, mask = tok.encode_messages([{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"},
                                     {"role": "user", "content": "+1="}, {"role": "assistant", "content": "4"}])
    assert ids == [1, 4, 75, 5, 83, 6, 2, 75, 4, 83, 7, 2]
    assert mask == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    record = tokenize_record({"prompt": "1+2=", "completion": "3"}, tok, max_len=None)
    np.testing.assert_array_equal(record["tokens"], [1, 4, 75, 5, 83, 6, 2])
    np.testing.assert_array_equal(record["loss_mask"], [0, 0, 0, 0, 0, 1, 1])


# ---- SFT records and config wiring --------------------------------------------------------------------


def test_sft_records_in_chat_layout(folders, reference):
    folder = folders["qwen2"]
    tok = build_tokenizer(ConfigDict({"tokenizer": str(folder), "chat": True, "system_prompt": "Be brief."}))
    assert tok.chat
    pair = tokenize_record({"prompt": QUESTION, "completion": "19"}, tok, max_len=None)
    np.testing.assert_array_equal(pair["tokens"], tok.encode_prompt(QUESTION) + tok.encode_response("19"))
    assert pair["loss_mask"].sum() == len(tok.encode_response("19"))
    conv = tokenize_record({"messages": CONVERSATION}, tok, max_len=None)
    ids, mask = tok.encode_messages(CONVERSATION)  # the record's own system turn; no system prompt added
    assert ids == _their_ids(reference["qwen2"], CONVERSATION)
    np.testing.assert_array_equal(conv["tokens"], ids)
    np.testing.assert_array_equal(conv["loss_mask"], mask)
    batch = next(iter(build_sft_dataset([{"messages": CONVERSATION}] * 2, tok, seq_len=128, batch_size=2,
                                        shuffle=False)))
    np.testing.assert_array_equal(batch["loss_mask"][0, :len(mask)], mask)
    with pytest.raises(ValueError, match="assistant"):
        tokenize_record({"messages": [{"role": "user", "content": "hi"}]}, tok, max_len=None)
    with pytest.raises(ValueError, match="message 1 must be a dict with string 'role' and 'content'"):
        tokenize_record({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}, tok, max_len=None)


def test_default_config_keeps_the_plain_layout(folders):
    from jaxrl_llm.cli import load_config_file

    data = load_config_file(str(ROOT / "configs" / "sft_tiny.py")).data
    assert data.chat is False and data.system_prompt == ""
    assert isinstance(build_tokenizer(data), CharTokenizer)
    data.tokenizer = str(folders["llama"])
    tok = build_tokenizer(data)
    assert not tok.chat and tok.encode_prompt("1") == [tok.bos_id] + tok.encode("1")


# ---- errors -------------------------------------------------------------------------------------------


def test_chat_without_a_template_names_the_folder(tmp_path, folders):
    folder = make_hf_checkpoint(tmp_path / "bare", "qwen2", with_model=False)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert HFTokenizer.from_file(folder).encode_prompt("1")  # fine without chat
    with pytest.raises(ValueError, match=rf"data.chat=True but {folder} has no chat template"):
        HFTokenizer.from_file(folder, chat=True)
    with pytest.raises(ValueError, match="the 'char' tokenizer has none"):
        build_tokenizer(ConfigDict({"tokenizer": "char", "chat": True, "system_prompt": ""}))
    with pytest.raises(ValueError, match="data.system_prompt is only used with data.chat=True"):
        HFTokenizer.from_file(folder, system_prompt="hi")


def test_bad_template_syntax_names_the_file(tmp_path):
    folder = make_hf_checkpoint(tmp_path / "bad", "llama", with_model=False)
    bad = folder / "chat_template.jinja"
    bad.write_text("{{ bos_token }}\n{% for m in messages %}{{ m.content }\n{% endfor %}")
    HFTokenizer.from_file(folder)  # plain runs never compile the template
    with pytest.raises(ChatTemplateError, match=rf"{bad}: chat template syntax error at line 2"):
        HFTokenizer.from_file(folder, chat=True)


def test_template_sources_and_precedence(tmp_path, folders):
    folder = make_hf_checkpoint(tmp_path / "src", "qwen2", with_model=False)
    chatml = ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # A list of named templates: "default" is the chat one.
    config["chat_template"] = [{"name": "tool_use", "template": "{{ raise_exception('tools') }}"},
                               {"name": "default", "template": chatml}]
    config_path.write_text(json.dumps(config))
    assert HFTokenizer.from_file(folder, chat=True).chat_template == chatml
    config["chat_template"] = [{"name": "tool_use", "template": chatml}]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: chat_template lists templates \['tool_use'\]"):
        HFTokenizer.from_file(folder, chat=True)
    # chat_template.jinja wins over tokenizer_config.json, as in transformers 5; an explicit argument over both.
    (folder / "chat_template.jinja").write_text(chat_template("qwen2"))
    assert HFTokenizer.from_file(folder, chat=True).chat_template == chat_template("qwen2")
    assert HFTokenizer.from_file(folder, chat=True, chat_template=chatml).chat_template == chatml
    explicit = tmp_path / "t.jinja"
    explicit.write_text(chatml)
    tok = HFTokenizer.from_file(folder, chat=True, chat_template=str(explicit))
    assert tok.render([{"role": "user", "content": "x"}], add_generation_prompt=True) == (
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n")


def test_template_without_end_of_turn_special_fails(folders):
    with pytest.raises(ValueError, match="no special token follows an assistant turn's content"):
        HFTokenizer.from_file(folders["qwen2"], chat=True,
                              chat_template="{% for m in messages %}{{ m.content + '\\n' }}{% endfor %}")


def test_added_tokens_decoder_registers_specials(tmp_path):
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models, pre_tokenizers

    words = ["[UNK]", "a", "b", "<|im_end|>"]
    raw = RawTokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.save(str(tmp_path / "tokenizer.json"))
    assert HFTokenizer.from_file(tmp_path, eos_token="<|im_end|>").encode("a<|im_end|>") == [0]  # one unknown word
    config = {"eos_token": "<|im_end|>", "added_tokens_decoder": {"3": {"content": "<|im_end|>", "special": True}}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HFTokenizer.from_file(tmp_path)
    assert tok.encode("a<|im_end|>") == [1, 3]
    assert tok.decode([1, 3]) == "a"
    config["added_tokens_decoder"] = {"2": {"content": "<|im_end|>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"added_tokens_decoder puts '<\|im_end\|>' at id 2 but .* has it at 3"):
        HFTokenizer.from_file(tmp_path)


# ---- the Jinja environment ----------------------------------------------------------------------------


def _render(template, **extra):
    return render_chat(template, [{"role": "user", "content": "é<b>"}], add_generation_prompt=False,
                       bos_token="<s>", eos_token="</s>", **extra)


def test_environment_matches_the_transformers_one():
    # tojson keeps non-ASCII and HTML characters, and takes indent / separators / sort_keys.
    assert _render("{{ messages[0] | tojson }}") == '{"role": "user", "content": "é<b>"}'
    assert (_render("{{ {'b': 1, 'a': [1]} | tojson(indent=2, sort_keys=true) }}")
            == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}')
    assert _render("{{ [1, 2] | tojson(separators=(',', ':')) }}") == "[1,2]"
    # trim_blocks + lstrip_blocks, loop controls, bos/eos and pass-through variables.
    assert _render("  {% for i in range(5) %}\n{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}\n") == "01"
    assert _render("{{ bos_token }}{{ date_string }}{{ eos_token }}", date_string="1 Jan") == "<s>1 Jan</s>"
    assert _render("{{ tools is none }}{{ enable_thinking is defined }}") == "TrueFalse"
    assert len(_render("{{ strftime_now('%Y') }}")) == 4
    assert _render("{% set ns = namespace(n=1) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}{{ dict(a=1)['a'] }}") == "21"
    assert _render("{% generation %}{{ 'x' }}{% endgeneration %}") == "x"
    with pytest.raises(ChatTemplateError, match="chat template: the chat template failed: no system role"):
        _render("{{ raise_exception('no system role') }}")
    with pytest.raises(ChatTemplateError, match="namespace attribute '_x'"):
        _render("{% set ns = namespace(_x=1) %}")
    with pytest.raises(ChatTemplateError, match="failed"):  # the sandbox refuses attribute escapes
        _render("{{ ''.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError, match="failed"):  # immutable: no in-place list edits
        _render("{% set x = [1] %}{{ x.append(2) }}")


def test_tojson_and_strftime_parity_with_transformers():
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    template = ("{{ messages | tojson }}|{{ messages[0] | tojson(indent=4) }}|"
                "{% for m in messages %}{{ loop.index }}{% endfor %}")
    messages = [{"role": "user", "content": "ü ✓ <tag> & 'q'"}, {"role": "assistant", "content": "x"}]
    theirs, _ = utils.render_jinja_template([messages], chat_template=template)
    assert render_chat(template, messages, add_generation_prompt=False, bos_token=None, eos_token=None) == theirs[0]


# ---- the model half of the fixture --------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fixture_checkpoint_loads_and_runs_in_both(family, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import jax.numpy as jnp

    from jaxrl_llm.models.hf import load_pretrained

    folder = make_hf_checkpoint(tmp_path, family)
    tok = HFTokenizer.from_file(folder, chat=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [FAMILIES[family]["model_class"]]
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= tok.vocab_size
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"]) == (64, 2, 4, 2)
    ids = tok.encode_prompt("2+2?")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    model, _ = load_pretrained(folder)
    ours, _ = model(jnp.asarray([ids], jnp.int32), jnp.arange(len(ids), dtype=jnp.int32)[None])
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4, rtol=2e-4)


def test_chat_template_kwargs_from_the_config_reach_the_template(folders):
    """`data.chat_template_kwargs.enable_thinking=false` renders as the Python argument does; without
    chat it is refused, naming the field."""
    direct = HFTokenizer.from_file(folders["qwen3"], chat=True, template_kwargs={"enable_thinking": False})
    data = ConfigDict({"tokenizer": folders["qwen3"], "chat": True, "system_prompt": "",
                       "chat_template_kwargs": ConfigDict({"enable_thinking": False})})
    assert build_tokenizer(data).encode_prompt("2+2=") == direct.encode_prompt("2+2=")
    assert build_tokenizer(data).encode_prompt("2+2=") != build_tokenizer(
        ConfigDict({**data.to_dict(), "chat_template_kwargs": {}})).encode_prompt("2+2=")
    data.chat = False
    with pytest.raises(ValueError, match="data.chat_template_kwargs"):
        build_tokenizer(data)
