from click.testing import CliRunner

from trainer.cli import main


def test_env_reports_the_installed_stack():
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 0, result.output
    assert "torch 2." in " ".join(result.output.split())
    assert "CPUExecutionProvider" in result.output
