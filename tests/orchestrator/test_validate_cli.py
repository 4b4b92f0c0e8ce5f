"""`wcscan validate`: the physics self-check users run."""

from orchestrator.cli import main


def test_validate_prints_the_comparison_with_flavio_and_the_fit_check(capsys):
    assert main(["validate", "--dc9", "-0.5", "--events", "50000", "--fit-sets", "4", "--events-per-set", "2000"]) == 0
    out = capsys.readouterr().out
    for name in ("AFB", "FL", "S5", "S9", "flavio", "sigma/sigma_CRB"):
        assert name in out


def test_validate_refuses_non_positive_events(capsys):
    assert main(["validate", "--events", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--events" in err[0]


def test_validate_refuses_a_single_fit_set(capsys):
    assert main(["validate", "--fit-sets", "1"]) == 2
    assert "--fit-sets" in capsys.readouterr().err
