"""The PyTorch counterparts of fastnn.models.lenet5 and cifar_net, for the benchmark scripts
(bench_cnn_epoch.py, fashion_lenet.py, cnn_peak_memory.py). Imports torch only, not fastnn,
so a process measuring PyTorch alone stays free of fastnn."""


def torch_model(name):
    """'lenet': LeNet-5 for 1x28x28 images; 'cifar': the CIFAR-style net for 3x32x32."""
    import torch.nn as nn
    if name == "lenet":
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                             nn.Linear(84, 10))
    layers, c_in = [], 3
    for c in (32, 64, 128):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                   nn.MaxPool2d(2)]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(2048, 10))
