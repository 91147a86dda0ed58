"""The PyTorch counterparts of fastnn.models.lenet5 and cifar_net, for the CNN benchmarks
(``fastnn bench --model``, benchmarks/). This module imports torch only, never fastnn, so
benchmarks/torch_models.py can load it into a process that measures PyTorch alone."""


def torch_model(name):
    """'lenet': LeNet-5 for 1x28x28 images (1->6 5x5 pad 2, max-pool 2, 6->16 5x5, max-pool
    2, 400-120-84-10, ReLU); 'convnet' (or 'cifar'): the CIFAR-style net for 3x32x32 images
    (3->32->64->128 channels, 3x3 pad 1, BatchNorm2d + ReLU + max-pool 2 after each, Linear
    2048->10). ValueError for another name."""
    import torch.nn as nn
    if name == "lenet":
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                             nn.Linear(84, 10))
    if name not in ("convnet", "cifar"):
        raise ValueError(f"torch_model: name must be 'lenet' or 'convnet', got {name!r}")
    layers, c_in = [], 3
    for c in (32, 64, 128):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                   nn.MaxPool2d(2)]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(2048, 10))
