from click.testing import CliRunner

from trainer.cli import main


def test_env_reports_the_installed_stack():
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 0, result.output
    assert "torch 2." in " ".join(result.output.split())
    assert "CPUExecutionProvider" in result.output


def test_help_shows_the_defaults_of_the_dataclasses():
    """Options default to None ("not given"); --help reads the default where it lives."""
    from datatool.backgrounds import BackgroundOptions
    from datatool.cli import main as datatool_main
    from trainer.evaluate import EvaluateConfig

    shown = " ".join(CliRunner().invoke(main, ["evaluate", "--help"]).output.split())
    assert f"[default: evaluate.threads of --params, else {EvaluateConfig().threads}]" in shown
    shown = " ".join(CliRunner().invoke(datatool_main, ["backgrounds", "--help"]).output.split())
    assert f"[default: {BackgroundOptions().crops}; x>=0]" in shown
