import subprocess
import sys

from visattn.cli import main


def test_blocks_lists_every_registered_block(capsys):
    import visattn

    assert main(["blocks"]) == 0
    out = capsys.readouterr().out
    for name in visattn.list_blocks():
        assert f"\n{name} " in out
    assert "PixelSelfAttention" in out and "resnet{18,34,50}_cbam" in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "visattn", "blocks", "--channels", "64"], capture_output=True,
                            text=True, check=True)
    assert "SqueezeExcite" in result.stdout
