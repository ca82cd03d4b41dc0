import torch

from mnist_train import models
from mnist_train.config import RunConfig


def test_seed_mlp_has_79510_parameters():
    model = models.build_model(RunConfig())
    assert models.count_parameters(model) == 79_510  # 784*100 + 100 + 100*10 + 10
    assert [count for _, _, count in models.parameter_summary(model)] == [78_400, 100, 1_000, 10]
    assert "79,510" in models.summary_text(model)


def test_softmax_is_one_linear_layer():
    model = models.build_model(RunConfig(model="softmax"))
    assert models.count_parameters(model) == 7_850
    assert model(torch.zeros(3, 784)).shape == (3, 10)


def test_deeper_mlp_with_dropout_and_activation():
    model = models.build_model(
        RunConfig(hidden_sizes=(200, 100, 50), activation="tanh", dropout=0.2)
    )
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Linear", "Tanh", "Dropout"] * 3 + ["Linear"]
    assert (
        models.count_parameters(model)
        == 784 * 200 + 200 + 200 * 100 + 100 + 100 * 50 + 50 + 50 * 10 + 10
    )
    assert model(torch.zeros(4, 784)).shape == (4, 10)


def test_initial_weights_follow_the_seed_like_the_notebook():
    torch.manual_seed(777)
    expected = torch.nn.Linear(784, 10, bias=True)
    torch.manual_seed(777)
    ours = models.build_model(RunConfig(model="softmax"))[0]
    assert torch.equal(ours.weight, expected.weight) and torch.equal(ours.bias, expected.bias)


def test_preprocessing_wrapper_standardises():
    net = models.build_model(RunConfig(model="softmax"))
    wrapped = models.with_preprocessing(net, 0.5, 0.25)
    x = torch.rand(2, 784)
    assert torch.allclose(wrapped(x), net((x - 0.5) / 0.25))
