"""The one helper every remembered table goes through: bounded, and only for keys that fit."""

from __future__ import annotations

from shield.decide.remembered import remember


def test_a_flood_of_new_keys_never_grows_a_table_past_its_bound() -> None:
    table: dict[int, str] = {}
    for key in range(10_000):
        assert remember(table, key, str(key), 100) == str(key)
        assert len(table) <= 100
    assert table[9_999] == "9999"  # the newest answer is kept after a rebuild


def test_an_answer_whose_key_does_not_fit_is_given_back_but_not_kept() -> None:
    table: dict[str, int] = {}
    assert remember(table, "x" * 1000, 7, 100, fits=False) == 7
    assert table == {}
