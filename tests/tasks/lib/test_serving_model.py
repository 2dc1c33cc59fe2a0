"""tasks/lib/serving_model.py: the fix it installs in MLflow's scoring server (the served model runs in
tests/tasks/lib/test_serving.py)."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

from tasks.lib.serving_model import refuse_deep_json


def test_deep_json_is_a_bad_request_and_ordinary_json_still_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    # MLflow's own decoder, also when a model loaded earlier in this process already wrapped it
    own = getattr(scoring_server._decode_json_input, "__wrapped__", scoring_server._decode_json_input)
    monkeypatch.setattr(scoring_server, "_decode_json_input", own)
    with pytest.raises(RecursionError):  # a 500 when it escapes the server
        scoring_server._decode_json_input('{"inputs": ' + deep + "}")
    refuse_deep_json()
    refuse_deep_json()  # idempotent: a second model loaded in the same server wraps nothing twice
    with pytest.raises(MlflowException, match="nested too deeply") as info:
        scoring_server._decode_json_input('{"inputs": ' + deep + "}")
    assert info.value.get_http_status_code() == 400
    assert scoring_server._decode_json_input('{"inputs": [[1, 2]]}') == {"inputs": [[1, 2]]}
