"""autotrain.private: the start-up checks pass on the installed libraries and name a member that is gone."""

from __future__ import annotations

import argparse

import pytest

from autotrain import private


def test_the_installed_libraries_pass():
    private.check_transformers()
    private.check_argparse()


def test_a_missing_router_loss_function_is_named(monkeypatch):
    from transformers.models.mixtral import modeling_mixtral

    monkeypatch.delattr(modeling_mixtral, "load_balancing_loss_func")
    with pytest.raises(RuntimeError, match="load_balancing_loss_func"):
        private.check_transformers()


def test_a_missing_argparse_member_is_named(monkeypatch):
    monkeypatch.delattr(argparse, "_SubParsersAction")
    with pytest.raises(RuntimeError, match="_actions"):
        private.check_argparse()


def test_the_rates_a_scheduler_reports_are_the_ones_set():
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    private.set_last_rates(scheduler, [0.25])
    assert scheduler.get_last_lr() == [0.25]
