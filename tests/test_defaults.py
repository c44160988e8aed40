"""The rule for plain strings, the tag whitespace rule, the unsteered warning, transformers' generation
keywords on the pipeline, and the warning when a user's hook leaves the direct path (tiny random models)."""

from __future__ import annotations

import copy
import json
import logging

import pytest

import attnlens as al
from attnlens import cli
from attnlens.core.errors import AttnlensError, DirectUnavailable
from attnlens.prompts.prompt import has_chat_template, resolve_chat

TAGGED = "<!-> Rewrite in French: <-!> Paris is big."


@pytest.fixture(scope="module")
def pipe(tiny):
    return al.pipeline("pay-attention", model=tiny)


def test_the_text_the_model_sees_under_the_rule(pipe, tokenizer):
    chat = pipe.prepare(TAGGED)
    assert chat.format == "chat"
    seen = tokenizer.decode(chat.input_ids)
    assert "<|im_start|>user\nRewrite in French: Paris is big.<|im_end|>\n<|im_start|>assistant\n" in seen
    (span,) = chat.spans
    assert tokenizer.decode(chat.input_ids[span.start:span.end]) == "Rewrite in French:"
    raw = pipe.prepare(TAGGED, raw=True)
    assert raw.format == "raw" and raw.text == "Rewrite in French: Paris is big."
    assert tokenizer.decode(raw.input_ids, skip_special_tokens=True) == raw.text  # (the tokenizer adds its BOS)
    (span,) = raw.spans
    assert tokenizer.decode(raw.input_ids[span.start:span.end]) == "Rewrite in French:"


def test_records_say_which_format_was_used(pipe):
    assert pipe(TAGGED, max_new_tokens=1)[0]["prompt_format"] == "chat"
    assert pipe(TAGGED, max_new_tokens=1, raw=True)[0]["prompt_format"] == "raw"
    assert pipe([{"role": "user", "content": TAGGED}], max_new_tokens=1)[0]["prompt_format"] == "chat"
    out = al.api.chain.steered_generation(pipe.model, TAGGED, max_new_tokens=1, raw=True)
    assert out["prompt_format"] == "raw" and out["prompt"] == "Rewrite in French: Paris is big."


def test_the_rule_without_a_chat_template(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    assert has_chat_template(tokenizer) and not has_chat_template(bare)
    assert resolve_chat(tokenizer) is True and resolve_chat(bare) is False
    assert resolve_chat(tokenizer, raw=True) is False and resolve_chat(tokenizer, chat=False) is False
    prompt = al.prepare(bare, TAGGED, chat=None)
    assert prompt.format == "raw" and prompt.text == "Rewrite in French: Paris is big."
    with pytest.raises(AttnlensError, match="raw=True and chat=True disagree"):
        resolve_chat(tokenizer, chat=True, raw=True)
    with pytest.raises(AttnlensError, match="chat must be True, False or None"):
        resolve_chat(tokenizer, chat="yes")


def test_a_prompt_with_nothing_to_steer_warns(pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="attnlens.api.chain"):
        pipe(["no tags here", TAGGED], max_new_tokens=1)
    warned = [r.getMessage() for r in caplog.records if "nothing is steered" in r.getMessage()]
    assert warned == ["input 0 has no tags (<!-> ... <-!>) and no emphasised substrings: nothing is steered"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attnlens.api.chain"):
        al.api.chain.steered_generation(pipe.model, "plain", max_new_tokens=1)
    assert any("the prompt has no tags" in r.getMessage() for r in caplog.records)


def test_generate_command_applies_the_rule_and_says_so(tiny, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    assert cli.main(["generate", TAGGED, "--max-new-tokens", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_format"] == "chat" and "user\nRewrite in French: Paris is big." in out["prompt"]
    assert cli.main(["generate", TAGGED, "--max-new-tokens", "2", "--json", "--raw"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_format"] == "raw" and out["prompt"] == "Rewrite in French: Paris is big."
    assert cli.main(["generate", "no tags", "--max-new-tokens", "1"]) == 0
    err = capsys.readouterr().err
    assert "attnlens: warning: the prompt has no tags" in err and err.count("nothing is steered") == 1
    assert "through the chat template" in err


def test_the_experiment_switch_has_the_same_name(tmp_path):
    from attnlens.cli.experiment import _experiment_config
    from attnlens.experiments import CONFIGS

    assert CONFIGS["json"](out=tmp_path, raw=True).chat is False
    assert CONFIGS["json"](out=tmp_path).chat is None  # the rule, once the tokenizer is known
    args = cli.build_parser().parse_args(["experiment", "json", "--out", str(tmp_path), "--raw"])
    assert _experiment_config(args).chat is False


# ----------------------------------------------------------------------------- transformers' keywords


def test_num_return_sequences_samples_that_many(pipe):
    out = pipe(TAGGED, max_new_tokens=4, num_return_sequences=3, do_sample=True, seed=0)
    assert len(out) == 3 and all(r["prompt_format"] == "chat" for r in out)
    assert len({r["generated_text"] for r in out}) > 1  # sampled rows differ (random tiny model, 4 tokens)
    two = pipe([TAGGED, "<!-> b <-!> c"], max_new_tokens=2, num_return_sequences=2, do_sample=True, seed=0)
    assert [len(rows) for rows in two] == [2, 2] and two[1][0]["prompt"].endswith("b c<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(AttnlensError, match="num_return_sequences=2 needs do_sample=True"):
        pipe(TAGGED, max_new_tokens=1, num_return_sequences=2)
    with pytest.raises(AttnlensError, match="num_return_sequences must be a positive integer"):
        pipe(TAGGED, max_new_tokens=1, num_return_sequences=0, do_sample=True)


def test_return_tensors_gives_the_sequence_ids(pipe, tokenizer):
    text = pipe(TAGGED, max_new_tokens=3)[0]
    ids = pipe(TAGGED, max_new_tokens=3, return_tensors=True)[0]
    assert "generated_text" not in ids
    prompt = pipe.prepare(TAGGED)
    assert ids["generated_token_ids"][: len(prompt)] == prompt.input_ids
    new = ids["generated_token_ids"][len(prompt):]
    assert tokenizer.decode(new, skip_special_tokens=True) == text["generated_text"]
    with pytest.raises(AttnlensError, match="cannot be combined with return_full_text"):
        pipe(TAGGED, max_new_tokens=1, return_tensors=True, return_full_text=False)


def test_streamer_gets_the_prompt_then_each_token(pipe):
    from transformers import TextIteratorStreamer

    class Collect:
        def __init__(self):
            self.puts, self.ended = [], 0

        def put(self, value):
            self.puts.append(value.tolist())

        def end(self):
            self.ended += 1

    collect = Collect()
    out = pipe(TAGGED, max_new_tokens=4, return_tensors=True, streamer=collect)[0]
    prompt = pipe.prepare(TAGGED).input_ids
    assert collect.puts[0] == [prompt] and collect.ended == 1
    streamed = [tokens[0] for tokens in collect.puts[1:]]
    assert prompt + streamed[: len(out["generated_token_ids"]) - len(prompt)] == out["generated_token_ids"]
    streamer = TextIteratorStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True)
    text = pipe(TAGGED, max_new_tokens=4, streamer=streamer)[0]["generated_text"]
    assert "".join(streamer) == text
    with pytest.raises(AttnlensError, match="one input at a time"):
        pipe([TAGGED, TAGGED], max_new_tokens=1, streamer=collect)
    with pytest.raises(AttnlensError, match="streamer must have put"):
        pipe(TAGGED, max_new_tokens=1, streamer=object())


# ----------------------------------------------------------------------------- slow paths said out loud


def test_a_users_hook_is_named_when_the_run_leaves_the_direct_path(pipe, caplog):
    model = pipe.model
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda t, hook: t)]):
        with caplog.at_level(logging.WARNING):
            out = pipe(TAGGED, max_new_tokens=2)
        assert out[0]["backend"] == "bridge"
        warned = [r.getMessage() for r in caplog.records if "leave the direct path" in r.getMessage()]
        assert len(warned) == 1 and "a hook on blocks.1.attn.hook_z " in warned[0] and "slower" in warned[0]
        assert "_original_component" not in warned[0]
        prompt = pipe.prepare(TAGGED)
        with pytest.raises(DirectUnavailable, match=r"blocks\.1\.attn\.hook_z has a hook"):
            al.api.chain.generate(model, [prompt], max_new_tokens=1, backend="direct")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            al.api.chain.generate(model, [prompt], max_new_tokens=1, backend="bridge")  # asked for: no warning
        assert not [r for r in caplog.records if "leave the direct path" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert pipe(TAGGED, max_new_tokens=1)[0]["backend"] == "direct"
    assert not [r for r in caplog.records if "direct path" in r.getMessage()]


def test_the_transformers_task_takes_the_same_keywords(tiny):
    import transformers

    task = transformers.pipeline("pay-attention", model=tiny)
    out = task("<!-> a <-!> b", max_new_tokens=2, num_return_sequences=2, do_sample=True, seed=0)
    assert len(out) == 2 and all(r["generated_text"].startswith(" a  b") for r in out)  # raw; only the tags removed
    ids = task("<!-> a <-!> b", max_new_tokens=2, return_tensors=True)[0]["generated_token_ids"]
    assert ids[: len(task.prepare("<!-> a <-!> b"))] == task.prepare("<!-> a <-!> b").input_ids
