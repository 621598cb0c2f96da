"""Each wire format, as the job sees it: the request key, URL, body and Accept header of one request
per preset, pinned to the values they had before the formats became classes (outputs made before
must resume: their keys must not move), and the checks of the endpoint and request sections."""

from __future__ import annotations

import pytest
from helpers import JobWriter

from batchrun.dispatch.client import default_headers
from batchrun.endpoints.registry import FORMATS
from batchrun.errors import SpecError
from batchrun.plan.planner import Planner
from batchrun.prepare import make_adapter
from batchrun.presets import PRESETS
from batchrun.spec import load_job

ROW = {"id": "r1", "q": "a cat", "n": 7}
CASES = {
    "hf-endpoint": ('base_url = "http://x/v1/"', 'system = "be brief"\nprompt = "{{ q }}"\nparams = {max_tokens = 9}'),
    "openai": ('model = "gpt-4o-mini"', 'messages = [{role = "user", content = "{{ n }}"}]'),
    "openai-compatible": (
        'base_url = "http://x"\nmodel = "m"\nstream = true\nstream_usage = false',
        'prompt = "{{ q }}"',
    ),
    "hf-serverless": ('model = "gpt2"', 'inputs = "{{ q }}"\nparameters = {max_new_tokens = 5}'),
    "hf-text-to-image": ('model = "sdxl"', 'prompt = "{{ q }}"\nparameters = {width = 64}'),
    "openai-images": ('model = "dall-e-3"', 'prompt = "{{ q }}"\nparams = {size = "256x256"}'),
    "custom": (
        'url = "http://x/gen/{{ id }}"\nresponse_path = "out"',
        'body = {text = "{{ q }}", k = "{{ n }}"}',
    ),
    "simulator": ("", 'prompt = "{{ q }}"'),
}
CASES["hf-serverless-with-body"] = ('model = "gpt2"', 'body = {inputs = "{{ q }}", options = {wait_for_model = true}}')

# (url, model, seed, key, body) of both samples
KEYS: dict[str, list[tuple[str, str | None, int | None, str, str]]] = {
    "custom": [
        ("http://x/gen/r1", None, None, "39d6e3c7f86743d6350b5c383bdd5b38", '{"k":7,"text":"a cat"}'),
        ("http://x/gen/r1", None, None, "2815f2c7ed45fafcf005e7622878fc3b", '{"k":7,"text":"a cat"}'),
    ],
    "hf-endpoint": [
        (
            "http://x/v1/chat/completions",
            "tgi",
            None,
            "e769d29216de9605104e09eac803ce30",
            '{"max_tokens":9,"messages":[{"content":"be brief","role":"system"},{"content":"a cat","role":"user"}],'
            '"model":"tgi","stream":true,"stream_options":{"include_usage":true}}',
        ),
        (
            "http://x/v1/chat/completions",
            "tgi",
            None,
            "90921abd8c760eeb1d7443852d347ed2",
            '{"max_tokens":9,"messages":[{"content":"be brief","role":"system"},{"content":"a cat","role":"user"}],'
            '"model":"tgi","stream":true,"stream_options":{"include_usage":true}}',
        ),
    ],
    "hf-serverless": [
        (
            "https://api-inference.huggingface.co/models/gpt2",
            "gpt2",
            None,
            "d26016b378610e3627268704002d657b",
            '{"inputs":"a cat","parameters":{"max_new_tokens":5}}',
        ),
        (
            "https://api-inference.huggingface.co/models/gpt2",
            "gpt2",
            None,
            "a7b417a0c47d88d82fe487f3ba9912e1",
            '{"inputs":"a cat","parameters":{"max_new_tokens":5}}',
        ),
    ],
    "hf-serverless-with-body": [
        (
            "https://api-inference.huggingface.co/models/gpt2",
            "gpt2",
            None,
            "e4533a1f0cd86062c4260ac039d71d23",
            '{"inputs":"a cat","options":{"wait_for_model":true}}',
        ),
        (
            "https://api-inference.huggingface.co/models/gpt2",
            "gpt2",
            None,
            "3323b9e38e7fc76691f088923dfaaa4b",
            '{"inputs":"a cat","options":{"wait_for_model":true}}',
        ),
    ],
    "hf-text-to-image": [
        (
            "https://router.huggingface.co/hf-inference/models/sdxl",
            "sdxl",
            1596075218,
            "aebc974c9d1afbe7132dd61f6b749d88",
            '{"inputs":"a cat","parameters":{"seed":1596075218,"width":64}}',
        ),
        (
            "https://router.huggingface.co/hf-inference/models/sdxl",
            "sdxl",
            422614027,
            "3299b350b3a98717f0baa697a3bc33a6",
            '{"inputs":"a cat","parameters":{"seed":422614027,"width":64}}',
        ),
    ],
    "openai": [
        (
            "https://api.openai.com/v1/chat/completions",
            "gpt-4o-mini",
            None,
            "55ece3c54909d5c48816d233f5d80183",
            '{"messages":[{"content":"7","role":"user"}],"model":"gpt-4o-mini"}',
        ),
        (
            "https://api.openai.com/v1/chat/completions",
            "gpt-4o-mini",
            None,
            "f55177dc43cdabcffe6c75a5cbe858e3",
            '{"messages":[{"content":"7","role":"user"}],"model":"gpt-4o-mini"}',
        ),
    ],
    "openai-compatible": [
        (
            "http://x/v1/chat/completions",
            "m",
            None,
            "37d9e8e9bf33d734bf8c4e306e4dc99f",
            '{"messages":[{"content":"a cat","role":"user"}],"model":"m","stream":true}',
        ),
        (
            "http://x/v1/chat/completions",
            "m",
            None,
            "7f0c10b20b137e148dac5454c6b0583a",
            '{"messages":[{"content":"a cat","role":"user"}],"model":"m","stream":true}',
        ),
    ],
    "openai-images": [
        (
            "https://api.openai.com/v1/images/generations",
            "dall-e-3",
            None,
            "36e4c9c1924af3ce0f809d3440c5c404",
            '{"model":"dall-e-3","n":1,"prompt":"a cat","response_format":"b64_json","size":"256x256"}',
        ),
        (
            "https://api.openai.com/v1/images/generations",
            "dall-e-3",
            None,
            "642cc45f2dcfcbae9945c319a9a9ec0c",
            '{"model":"dall-e-3","n":1,"prompt":"a cat","response_format":"b64_json","size":"256x256"}',
        ),
    ],
    "simulator": [
        (
            "http://simulator.invalid/v1/chat/completions",
            "sim-model",
            None,
            "e5925da131d09f4558fab9629ab4fa48",
            '{"messages":[{"content":"a cat","role":"user"}],"model":"sim-model"}',
        ),
        (
            "http://simulator.invalid/v1/chat/completions",
            "sim-model",
            None,
            "431db760fd3f74d5a81f174011073792",
            '{"messages":[{"content":"a cat","role":"user"}],"model":"sim-model"}',
        ),
    ],
}
ACCEPT: dict[str, str] = {
    "custom": "application/json",
    "hf-endpoint": "application/json",
    "hf-serverless": "application/json",
    "hf-serverless-with-body": "application/json",
    "hf-text-to-image": "image/png",
    "openai": "application/json",
    "openai-compatible": "application/json",
    "openai-images": "application/json",
    "simulator": "application/json",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_keys_and_bodies_of_one_request_per_preset_hold(write_job: JobWriter, case: str) -> None:
    endpoint, request = CASES[case]
    preset = case.removesuffix("-with-body")
    path = write_job(preset=preset, endpoint=endpoint, request=request + "\nsamples = 2")
    job = load_job(path, needs_key=False)
    requests = list(Planner(job).plan([ROW]))
    assert [(r.url, r.model, r.seed, r.key, r.body.decode()) for r in requests] == KEYS[case]
    assert default_headers(job.endpoint)["Accept"] == ACCEPT[case]


BAD_REQUESTS = [
    ("openai-compatible", 'model = "m"', "", "request: a chat endpoint needs exactly one of prompt or messages"),
    (
        "openai-compatible",
        'model = "m"',
        'prompt = "{{ q }}"\ninputs = "x"',
        "request: a chat endpoint takes prompt/messages and params, not body/inputs",
    ),
    (
        "openai-compatible",
        'model = "m"',
        'prompt = "{{ q }}"\nparams = {stream = true}',
        "request.params.stream: set endpoint.stream (and stream_usage) instead",
    ),
    (
        "openai-compatible",
        'model = "m"',
        'messages = [{content = "x"}]',
        "request.messages.0: each message needs a role and a content",
    ),
    ("openai-compatible", "", 'prompt = "{{ q }}"', "endpoint.model: a chat endpoint needs a model name"),
    ("hf-text-to-image", 'model = "s"', "", "request.inputs: a text-to-image endpoint needs inputs (or prompt)"),
    ("openai-images", "", 'inputs = "x"', "request.prompt: openai-images needs a prompt, e.g. '{{ prompt }}'"),
    ("hf-serverless", 'model = "g"', "", "request.inputs: hf-serverless needs inputs (or prompt), e.g. '{{ text }}'"),
    ("custom", 'url = "http://x"\nresponse_path = "a"', 'prompt = "x"', "request.body: a custom endpoint needs a body"),
    ("custom", 'url = "http://x"', "body = 1", "endpoint.response_path: a custom endpoint needs a JMESPath response"),
    (
        "openai-images",
        "stream = true",
        'prompt = "x"',
        "endpoint.stream: the openai-images preset does not stream; set stream = false",
    ),
]


@pytest.mark.parametrize(("preset", "endpoint", "request_lines", "expected"), BAD_REQUESTS)
def test_each_format_checks_its_endpoint_and_request_sections(
    write_job: JobWriter, preset: str, endpoint: str, request_lines: str, expected: str
) -> None:
    path = write_job(preset=preset, endpoint='base_url = "http://x"\n' + endpoint, request=request_lines)
    with pytest.raises(SpecError) as caught:
        load_job(path, needs_key=False)
    assert f"{path}: {expected}" in str(caught.value)


def test_a_response_path_that_is_not_jmespath_is_refused_before_sending(write_job: JobWriter) -> None:
    path = write_job(preset="custom", endpoint='url = "http://x"\nresponse_path = "a[["', request="body = 1")
    with pytest.raises(SpecError, match=r"endpoint.response_path: not valid JMESPath"):
        make_adapter(load_job(path, needs_key=False))


def test_every_preset_is_a_registered_format_plus_defaults() -> None:
    assert {name: FORMATS[preset.format].name for name, preset in PRESETS.items()} == {
        "hf-endpoint": "chat",
        "openai": "chat",
        "openai-compatible": "chat",
        "hf-serverless": "hf-serverless",
        "hf-text-to-image": "image-hf",
        "openai-images": "image-openai",
        "custom": "custom",
        "simulator": "chat",
    }
    assert [name for name, preset in PRESETS.items() if preset.simulated] == ["simulator"]
