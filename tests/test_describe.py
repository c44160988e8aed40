"""describe_head against a real HTTP endpoint on 127.0.0.1 (attnlens.testing.ChatStubServer), through openai's client."""

from __future__ import annotations

import json
import logging

import pytest
from openai import OpenAI

import attnlens as al
from attnlens import cli
from attnlens.analysis.descriptions import DEFAULT_SYSTEM_PROMPT, DescribeError, complete, make_client
from attnlens.analysis.descriptions import PROMPT_PREFIX
from attnlens.api import AttentionData
from attnlens.testing import ChatStubServer

TEXTS = [
    "The cat sat on the mat because it was tired after chasing the mouse all day.",
    "Paris is the capital of France and Rome is the capital of Italy.",
    "Water boils at one hundred degrees at sea level.",
]
KEY = "sk-attnlens-test-0123456789abcdef"
REPLY = "This head attends to the first noun of the sentence."


def client_for(server: ChatStubServer, key: str = KEY, **kwargs) -> OpenAI:
    return OpenAI(base_url=server.url, api_key=key, **kwargs)


def make_ad(model, client, **kwargs) -> AttentionData:
    return AttentionData(model, openai_model="stub-model", text_batch=TEXTS, min_length=4, max_length=14,
                         client=client, seed=0, **kwargs)


def test_describe_head_success(tiny, caplog):
    with ChatStubServer(REPLY, api_key=KEY, models=["stub-model"]) as server:
        ad = make_ad(tiny, client_for(server))
        with caplog.at_level(logging.DEBUG):
            prompt, description = ad.describe_head(layer=1, head=2, num_samples=3, custom_prompt="Be brief.")
    assert description == REPLY
    assert ad.heads[(1, 2)].descriptions == [REPLY]
    assert ad.heads[(1, 2)].prompts == [prompt]
    (request,) = server.requests
    assert request.path == "/v1/chat/completions" and request.authorized
    assert request.body["model"] == "stub-model"
    system, user = request.body["messages"]
    assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert user == {"role": "user", "content": prompt}
    assert prompt.startswith(PROMPT_PREFIX) and "Example 3:" in prompt and "Example 4:" not in prompt
    assert prompt.index("Be brief.") > prompt.index("Example 3:")
    # print_description outside a notebook: an INFO record; the key is never logged
    assert f"layer 1 head 2: {REPLY}" in caplog.text
    assert KEY not in caplog.text


def test_every_description_is_kept(tiny):
    answers = iter(["first answer", "second answer"])
    with ChatStubServer(lambda body: next(answers)) as server:
        ad = make_ad(tiny, client_for(server))
        ad.describe_head(layer=0, head=1, num_samples=2, print_description=False)
        ad.describe_head(layer=0, head=1, num_samples=2, print_description=False)
    assert ad.heads[(0, 1)].descriptions == ["first answer", "second answer"]


def test_429_then_success_is_retried(tiny):
    with ChatStubServer(REPLY, failures=[429], retry_after_ms=5) as server:
        ad = make_ad(tiny, client_for(server, max_retries=2))
        _, description = ad.describe_head(layer=0, head=0, num_samples=2, print_description=False)
    assert description == REPLY
    assert len(server.requests) == 2  # the 429, then the retry


def test_5xx_then_success_is_retried(tiny):
    with ChatStubServer(REPLY, failures=[503, 502], retry_after_ms=5) as server:
        _, description = make_ad(tiny, client_for(server, max_retries=3)).describe_head(
            layer=0, head=0, num_samples=2, print_description=False)
    assert description == REPLY and len(server.requests) == 3


def test_401_is_a_clear_error_without_the_key(tiny, caplog):
    wrong = "sk-wrong-key-9876543210"
    with ChatStubServer(REPLY, api_key=KEY) as server:
        ad = make_ad(tiny, client_for(server, key=wrong))
        with caplog.at_level(logging.DEBUG), pytest.raises(DescribeError) as info:
            ad.describe_head(layer=0, head=0, num_samples=2)
    assert info.value.status == 401 and info.value.fatal
    assert "rejected the API key (401" in str(info.value)
    assert wrong not in str(info.value) and wrong not in caplog.text
    assert len(server.requests) == 1  # a 401 is not retried
    assert ad.heads[(0, 0)].descriptions == []


def test_unknown_model_is_a_clear_error(tiny):
    with ChatStubServer(REPLY, models=["llama3"]) as server:
        ad = make_ad(tiny, client_for(server))
        with pytest.raises(DescribeError, match=r"model 'stub-model' not found at http://127\.0\.0\.1:\d+/v1 \(404\)"):
            ad.describe_head(layer=0, head=0, num_samples=2)


def test_rate_limit_left_after_retries_is_not_fatal(tiny):
    with ChatStubServer(REPLY, failures=[429, 429, 429], retry_after_ms=5) as server:
        with pytest.raises(DescribeError, match=r"rate-limiting.*\(429\) after 2 retries") as info:
            complete(client_for(server, max_retries=2), "stub-model", "hello")
    assert not info.value.fatal and len(server.requests) == 3


def test_timeout_is_a_clear_error():
    with ChatStubServer(REPLY, delay_s=1.0) as server:
        with pytest.raises(DescribeError, match="did not answer within") as info:
            complete(client_for(server, timeout=0.2, max_retries=0), "stub-model", "hello")
    assert not info.value.fatal


def test_unreachable_server_is_a_clear_error():
    with ChatStubServer(REPLY) as server:
        url = server.url
    client = OpenAI(base_url=url, api_key=KEY, max_retries=0)
    with pytest.raises(DescribeError, match="cannot reach .*Is the server running"):
        complete(client, "stub-model", "hello")


def test_no_api_key_is_a_clear_error(tiny, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ad = AttentionData(tiny, openai_model="gpt-4o-mini", text_batch=TEXTS, min_length=4, max_length=14)
    with pytest.raises(DescribeError, match="no OpenAI API key: set OPENAI_API_KEY"):
        ad.describe_head(layer=0, head=0)
    # a custom endpoint may do without a key
    assert make_client(base_url="http://127.0.0.1:1/v1").api_key == "not-needed"


def test_key_from_the_environment(tiny, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ChatStubServer(REPLY, api_key=KEY) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)  # openai's own setting for the default endpoint
        ad = AttentionData(tiny, openai_model="m", text_batch=TEXTS, min_length=4, max_length=14)
        _, description = ad.describe_head(layer=0, head=0, num_samples=1, print_description=False)
    assert description == REPLY and server.requests[0].authorized


def test_describe_heads_table(tiny):
    def reply(body):
        return f"described {len(body['messages'][1]['content'])} characters"

    with ChatStubServer(reply) as server:
        ad = make_ad(tiny, client_for(server))
        table = ad.describe_heads(layers=[0, 1], heads="all", num_samples=2, max_concurrency=3, progress=False)
    assert [(r.layer, r.head) for r in table] == [(layer, head) for layer in (0, 1) for head in range(4)]
    assert all(r.ok and r.description == f"described {len(r.prompt)} characters" for r in table)
    assert len(server.requests) == 8
    assert ad.heads[(1, 3)].descriptions == [table.get(1, 3).description]
    assert table._repr_html_().count("<tr>") == 9
    assert str(table).splitlines()[0].startswith("L0H0: described")


def test_describe_heads_records_transient_failures_and_stops_on_fatal(tiny):
    with ChatStubServer(REPLY, failures=[500]) as server:
        table = make_ad(tiny, client_for(server, max_retries=0)).describe_heads(
            layers=0, heads=[0, 1, 2], max_concurrency=1, progress=False)
    assert sum(not r.ok for r in table) == 1 and sum(r.ok for r in table) == 2
    assert "server error (500)" in next(r.error for r in table if not r.ok)
    with ChatStubServer(REPLY, api_key=KEY) as server:
        with pytest.raises(DescribeError, match="401"):
            make_ad(tiny, client_for(server, key="sk-bad-key")).describe_heads(layers=0, progress=False)


def test_describe_heads_seed_gives_the_same_prompts(tiny):
    with ChatStubServer(REPLY) as server:
        a = make_ad(tiny, client_for(server)).describe_heads(layers=[2], heads=[1, 3], max_concurrency=2, progress=False)
        b = make_ad(tiny, client_for(server)).describe_heads(layers=[2], heads=[1, 3], max_concurrency=1, progress=False)
    assert [r.prompt for r in a] == [r.prompt for r in b]


def test_cli_describe(tiny, tmp_path, monkeypatch, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS), encoding="utf-8")
    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    monkeypatch.setenv("MY_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ChatStubServer(REPLY, api_key=KEY, models=["llama3"]) as server:
        base = ["heads", "describe", "--layer", "1", "--head", "2", "--texts", str(texts), "--min-length", "4",
                "--max-length", "14", "--base-url", server.url, "--num-samples", "2", "--seed", "3"]
        assert cli.main([*base, "--openai-model", "llama3", "--api-key-env", "MY_KEY", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["description"] == REPLY and out["layer"] == 1 and out["head"] == 2
        assert server.requests[-1].body["messages"][1]["content"] == out["prompt"]
        # the key comes from the named variable only: OPENAI_API_KEY is unset, so this one is refused
        assert cli.main([*base, "--openai-model", "llama3"]) == 2
        err = capsys.readouterr().err
        assert "401" in err and KEY not in err
        assert cli.main([*base, "--openai-model", "gpt-9", "--api-key-env", "MY_KEY"]) == 2
        assert "model 'gpt-9' not found" in capsys.readouterr().err
    assert cli.main(["heads", "describe", "--layer", "0", "--head", "0", "--texts", str(texts),
                     "--openai-model", "gpt-4o-mini"]) == 2
    assert "no OpenAI API key" in capsys.readouterr().err


def test_cli_describe_all_as_a_resumable_sweep(tiny, tmp_path, monkeypatch, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS), encoding="utf-8")
    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    monkeypatch.setenv("MY_KEY", KEY)
    with ChatStubServer(REPLY, api_key=KEY) as server:
        argv = ["heads", "describe-all", "--layers", "0,2", "--heads", "1,3", "--texts", str(texts), "--min-length",
                "4", "--max-length", "14", "--base-url", server.url, "--num-samples", "2", "--seed", "3",
                "--openai-model", "stub", "--api-key-env", "MY_KEY", "--sweep-dir", str(tmp_path / "sweep"), "--json"]
        assert cli.main(argv) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [(r["layer"], r["head"], r["description"]) for r in rows] == [
            (0, 1, REPLY), (0, 3, REPLY), (2, 1, REPLY), (2, 3, REPLY)]
        assert len(server.requests) == 4
        on_disk = [json.loads(line) for line in (tmp_path / "sweep" / "descriptions.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in on_disk] == [r["prompt"] for r in rows]
        assert all(m[1] > 1 for r in on_disk for m in r["multiples"])
        assert cli.main(argv) == 0 and len(server.requests) == 4  # done layers are not asked again
        assert json.loads(capsys.readouterr().out) == rows


def test_public_names():
    assert al.AttentionData is AttentionData
    assert "AttentionData" in al.__all__ and "viz" in al.__all__
    assert callable(al.steering_diff) and callable(al.viz.head_patterns) and callable(al.viz.steering_view)
    with pytest.raises(AttributeError, match="never run the model"):
        al.viz.steering_diff  # noqa: B018 (views take data; the capturing call is al.steering_diff)


@pytest.mark.parametrize("sweep", [False, True])
def test_the_deadline_holds_with_and_without_a_sweep(tiny, tmp_path, sweep):
    """One describing loop: a server slower than the deadline gives each head an error, in sweeps too."""
    with ChatStubServer(REPLY, delay_s=3.0) as server:
        ad = make_ad(tiny, client_for(server, max_retries=0), deadline=0.3)
        table = ad.describe_heads(layers=[0], heads=[0, 1], max_concurrency=2, progress=False,
                                  sweep_dir=tmp_path / "sweep" if sweep else None)
    rows = list(table)
    assert len(rows) == 2
    for row in rows:
        assert row.description is None and "deadline of 0.3 s" in row.error, row


def test_a_timeout_cut_to_the_deadline_is_reported_as_the_deadline(monkeypatch):
    """The attempt's own timeout (cut to the deadline) may fire before the watchdog: still the deadline."""
    from attnlens.analysis import chat_client

    # no watchdog: only the client's timeout (cut to the deadline) can end the attempt
    monkeypatch.setattr(chat_client, "_within", lambda seconds, call: call(__import__("threading").Event(), {}))
    with ChatStubServer(REPLY, delay_s=3.0) as server:
        with pytest.raises(DescribeError, match=r"deadline of 0.3 s") as info:
            complete(client_for(server, max_retries=0), "stub-model", "hi", deadline=0.3)
    assert "client's timeout" not in str(info.value)
    # a client whose own timeout is shorter than the deadline still names the client's timeout
    with ChatStubServer(REPLY, delay_s=3.0) as server:
        with pytest.raises(DescribeError, match=r"client's timeout"):
            complete(client_for(server, max_retries=0, timeout=0.2), "stub-model", "hi", deadline=5.0)
