"""Ready-made convolutional models, and `fastnn train --model NAME` for them.

    model = fn.models.lenet5()          # LeNet-5 for 1x28x28 images (Fashion-MNIST)
    model = fn.models.digits_cnn()      # a small CNN for the bundled digits as 1x8x8 images
    model = fn.models.cifar_net()       # 3x32x32: 3 -> 32 -> 64 -> 128 channels, BatchNorm2d

Each builder returns a fastnn.Sequential (PyTorch layer names, so ``model.state_dict()``
loads into the same torch.nn.Sequential).
"""
import numpy as np

import fastnn

MODELS = ("lenet", "cnn", "cifar")


def _conv(*args, **kwargs):
    return fastnn.Conv2d(*args, **kwargs)


def lenet5(num_classes=10, in_channels=1, seed=None):
    """LeNet-5 for (N, in_channels, 28, 28) images: Conv2d(in, 6, 5, padding=2), ReLU,
    MaxPool2d(2), Conv2d(6, 16, 5), ReLU, MaxPool2d(2), Flatten, Linear(400, 120), ReLU,
    Linear(120, 84), ReLU, Linear(84, num_classes). Output (N, num_classes) logits."""
    return fastnn.Sequential(
        _conv(in_channels, 6, 5, padding=2), fastnn.ReLU(), fastnn.MaxPool2d(2),
        _conv(6, 16, 5), fastnn.ReLU(), fastnn.MaxPool2d(2), fastnn.Flatten(),
        fastnn.Linear(16 * 5 * 5, 120), fastnn.ReLU(), fastnn.Linear(120, 84), fastnn.ReLU(),
        fastnn.Linear(84, num_classes), seed=seed)


def digits_cnn(num_classes=10, seed=None):
    """A small CNN for (N, 1, 8, 8) images (fastnn.datasets.load_digits(images=True)):
    Conv2d(1, 16, 3, padding=1), BatchNorm2d(16), ReLU, MaxPool2d(2) -> 16x4x4,
    Conv2d(16, 32, 3, padding=1), BatchNorm2d(32), ReLU, MaxPool2d(2) -> 32x2x2, Flatten,
    Linear(128, num_classes)."""
    return fastnn.Sequential(
        _conv(1, 16, 3, padding=1), fastnn.BatchNorm2d(16), fastnn.ReLU(), fastnn.MaxPool2d(2),
        _conv(16, 32, 3, padding=1), fastnn.BatchNorm2d(32), fastnn.ReLU(), fastnn.MaxPool2d(2),
        fastnn.Flatten(), fastnn.Linear(32 * 2 * 2, num_classes), seed=seed)


def cifar_net(num_classes=10, seed=None):
    """The CIFAR-style net of the benchmarks, for (N, 3, 32, 32) images: three blocks of
    Conv2d(3x3, padding=1) + BatchNorm2d + ReLU + MaxPool2d(2) with 32, 64, 128 channels,
    Flatten, Linear(2048, num_classes)."""
    layers, c_in = [], 3
    for c in (32, 64, 128):
        layers += [_conv(c_in, c, 3, padding=1), fastnn.BatchNorm2d(c), fastnn.ReLU(),
                   fastnn.MaxPool2d(2)]
        c_in = c
    return fastnn.Sequential(*layers, fastnn.Flatten(), fastnn.Linear(128 * 4 * 4, num_classes),
                             seed=seed)


def _standardize(train, *others):
    """Scale every array by the training images' mean and standard deviation (one number
    each, as torchvision's Normalize), in float32."""
    mean, std = float(train.mean(dtype=np.float64)), float(train.std(dtype=np.float64))
    std = std if std > 0 else 1.0
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def load_data(name, seed=0, path=None):
    """(description, ((X, y), (X_val, y_val), (X_test, y_test))) for a model of MODELS:
    "lenet": Fashion-MNIST (54,000 / 6,000 / 10,000, path= the IDX folder, default the Debian
    package's), "cnn": the bundled digits as 1x8x8 images (70 / 15 / 15 %, stratified).
    Images are standardised with the training split's mean and deviation."""
    if name == "lenet":
        (x, y), (xt, yt) = fastnn.datasets.load_fashion_mnist(path)
        (tr, va, _) = fastnn.train_val_test_split(x, y, 0.1, 0, seed=seed)
        what = "Fashion-MNIST"
        te = (xt, yt)
    elif name == "cnn":
        X, y = fastnn.datasets.load_digits(images=True)
        tr, va, te = fastnn.train_val_test_split(X, y, 0.15, 0.15, seed=seed, stratify=True)
        what = "digits (1x8x8 images)"
    else:
        raise ValueError(f"load_data: name must be 'lenet' or 'cnn', got {name!r}")
    xs = _standardize(tr[0], va[0], te[0])
    return what, ((xs[0], tr[1]), (xs[1], va[1]), (xs[2], te[1]))


BUILDERS = {"lenet": lenet5, "cnn": digits_cnn, "cifar": cifar_net}


def train_cli(args, logger=None, comm=None):
    """`fastnn train --model lenet|cnn`: build, train with the command's optimizer, lr,
    epochs, batch size and seed (data-parallel over comm's ranks with --distributed), report
    the test accuracy, save with --save and draw the curves with --plot (rank 0). Mistakes
    raise fastnn.cli.UsageError (one line, exit status 2)."""
    from .cli import UsageError

    if args.model not in ("lenet", "cnn"):
        raise UsageError(f"fastnn train: --model {args.model} has no bundled data set; "
                         f"use fastnn.models.{BUILDERS[args.model].__name__}() in Python")
    if args.model == "cnn" and args.data is not None:
        raise UsageError("fastnn train --model cnn: trains on the bundled digits; --data is "
                         "for mlp and lenet")
    try:
        what, ((X, y), (Xv, yv), (Xt, yt)) = load_data(args.model, args.seed, args.data)
        model = BUILDERS[args.model](seed=args.seed)
    except (FileNotFoundError, RuntimeError) as e:
        raise UsageError(f"--model {args.model}: {e}") from None
    if comm is not None:
        norm = fastnn.distributed.batch_norm_layer(model)
        if norm is not None:
            raise UsageError(f"fastnn train --model {args.model} --distributed: the model has "
                             f"batch norm ({norm._where()}), whose batch statistics would be "
                             f"each rank's rows alone; train it in one process, or use "
                             f"--model lenet or mlp")
    if args.batch_size > len(X):
        raise UsageError(f"--batch-size {args.batch_size} is larger than the {len(X)} training "
                         f"images; choose at most {len(X)}")
    opt_cls = getattr(fastnn, {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW",
                               "rmsprop": "RMSprop", "adagrad": "Adagrad"}[args.optimizer])
    opt = opt_cls(model.parameters(), **({} if args.lr is None else {"lr": args.lr}))
    loss = fastnn.CrossEntropyLoss()
    print(f"data: {what}: {len(X)} train, {len(Xv)} validation, {len(Xt)} test images of "
          f"shape {X.shape[1:]}, {int(y.max()) + 1} classes")
    print(f"model: {args.model}, {sum(p.size for p in model.parameters())} parameters; {opt}")
    print(model)
    callbacks = [logger] if logger is not None else []
    history = fastnn.fit(model, loss, opt, X, y, epochs=args.epochs,
                         batch_size=args.batch_size, validation_data=(Xv, yv), seed=args.seed,
                         callbacks=callbacks, verbose=0, comm=comm)
    result = fastnn.evaluate(model, loss, Xt, yt, comm=comm)
    print(f"test accuracy: {result['accuracy']:.4f} (test loss {result['loss']:.4f})")
    if args.save and (comm is None or comm.rank == 0):
        fastnn.save(model, args.save)
        print(f"saved the model to {args.save}")
    if args.plot and (comm is None or comm.rank == 0):
        from . import plot
        plot.history(history, args.plot, title=f"fastnn train --model {args.model}: {what}")
        print(f"saved the training curves to {args.plot}")
    return 0
