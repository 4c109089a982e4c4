"""COBOT's pieces: the quaternion (Hamilton) layer, coefficient mixing, plug-in equivalence."""

import torch
from conftest import tiny_backbone

from adapt.methods import attach
from adapt.methods.cobot import CobotCoefficients, hamilton_matrix


def hamilton_product(p, q):
    a1, b1, c1, d1 = p
    a2, b2, c2, d2 = q
    return torch.stack(
        [
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ]
    )


def test_quaternion_layer_is_a_hamilton_product():
    # With 1x1 components the arranged matrix M(w) is the left-multiplication matrix of the
    # conjugate quaternion: M(w) x = conj(w) (x) x. So it composes as quaternions do,
    # M(w1) M(w2) = M(w2 (x) w1), which a generic 4x4 matrix does not.
    w1, w2, x = torch.randn(4), torch.randn(4), torch.randn(4)
    m = lambda w: hamilton_matrix(*[c.view(1, 1) for c in w])  # noqa: E731
    conj = lambda w: w * torch.tensor([1.0, -1.0, -1.0, -1.0])  # noqa: E731
    assert torch.allclose(m(w1) @ x, hamilton_product(conj(w1), x), atol=1e-5)
    assert torch.allclose(m(w1) @ m(w2), m(hamilton_product(w2, w1)), atol=1e-5)
    assert not torch.allclose(m(w1) @ m(w2), m(hamilton_product(w1, w2)), atol=1e-3)


def test_quaternion_parameter_count():
    c = CobotCoefficients(width=16, slices=12)
    assert c.quaternion.numel() == 12 * 4 * 4 * 4
    assert sum(p.numel() for p in c.parameters()) == 1296


def test_mixing_matrix_folds_the_forward():
    c = CobotCoefficients(width=8, slices=3, quaternion_init="random")
    with torch.no_grad():
        c.C.normal_()
        c.S.normal_()
        c.gamma.normal_()
    h = torch.randn(5, 8)
    for t in range(3):
        assert torch.allclose(c(h, t), h @ c.matrix(t).t(), atol=1e-5)


def test_relation_matrix_couples_slices():
    c = CobotCoefficients(width=4, slices=3)
    with torch.no_grad():
        c.S[0, 2] = 1.0  # slice 2 now also reads slice 0's coefficient set
        c.C[:, 0] = 3.0
    assert torch.allclose(c.scale(2), torch.full((4,), 1.0 + 3.0 + 1.0))


def test_identity_quaternion_init_makes_cobot_start_as_its_base_method():
    inputs = None
    outs = {}
    for method in ("lora", "cobot-lora"):
        backbone = tiny_backbone("sam", seed=0)
        torch.manual_seed(123)
        handle = attach(backbone, method)
        inputs = inputs or backbone.example_inputs()
        # give B a value so the branch is live; A was drawn from the same seed in both
        with torch.no_grad():
            for name, p in handle.adapter_parameters().items():
                if name.endswith(".B"):
                    p.fill_(0.01)
            outs[method] = backbone.forward(inputs)
    assert torch.allclose(outs["lora"], outs["cobot-lora"], atol=1e-6)
