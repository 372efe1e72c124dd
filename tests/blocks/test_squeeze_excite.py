import torch

from tests.conftest import randomize_parameters
from visattn import SqueezeExcite


def test_equals_paper_equation():
    se = randomize_parameters(SqueezeExcite(16, rd_channels=4))
    x = torch.randn(2, 16, 5, 4)
    z = x.mean((2, 3))  # squeeze, Eq. 2
    s = torch.sigmoid(se.fc2.weight @ torch.relu(se.fc1.weight @ z.T + se.fc1.bias[:, None]) + se.fc2.bias[:, None])
    torch.testing.assert_close(se(x), x * s.T[:, :, None, None])  # excite + scale, Eq. 3-4


def test_custom_activation_and_gate():
    se = SqueezeExcite(16, act_layer="gelu", gate_layer="hard_sigmoid")
    assert isinstance(se.act, torch.nn.GELU) and isinstance(se.gate.act, torch.nn.Hardsigmoid)
