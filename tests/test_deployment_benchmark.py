"""The timing of benchmarks/deployment.py: runtimes take turns, so a drifting machine moves them alike."""

import pytest
import torch

from .conftest import load_script


def test_runtimes_take_turns_and_get_their_own_median(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = load_script("benchmarks/deployment.py")
    calls: list[str] = []
    # A fake clock: each call of runtime "a" lasts 1 s, of "b" 3 s, whatever the order.
    now = [0.0]
    durations = {"a": 1.0, "b": 3.0}

    def predictor(name: str):
        def predict(images: torch.Tensor) -> dict:
            calls.append(name)
            now[0] += durations[name]
            return {}

        return predict

    monkeypatch.setattr(deployment.time, "perf_counter", lambda: now[0])
    seconds = deployment.time_predictors({"a": predictor("a"), "b": predictor("b")}, torch.zeros(1), repeats=3)

    assert seconds == {"a": 1.0, "b": 3.0}
    # Two warm-up calls each, then the timed calls alternate.
    assert calls == ["a", "a", "b", "b", "a", "b", "a", "b", "a", "b"]
