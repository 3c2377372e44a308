"""Datasets as in-memory uint8 tensors: named loaders, the :class:`ImageTensors` container, batches."""

from backdoorlab.data.cifar import CIFAR10_CLASSES, RestrictedUnpickler, load_cifar10, load_restricted_pickle
from backdoorlab.data.fashion import FASHION_CLASSES, load_fashion_mnist
from backdoorlab.data.folder import load_folder
from backdoorlab.data.loader import Augment, Batches, random_crop, random_flip
from backdoorlab.data.mnist import load_idx_dataset, load_mnist, load_mnist5k, read_idx, write_idx
from backdoorlab.data.registry import (
    DatasetInfo,
    dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
)
from backdoorlab.data.shapes import SHAPE_CLASSES, generate_shapes, load_shapes
from backdoorlab.data.tensors import ImageTensors, make_generator

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_CLASSES",
    "SHAPE_CLASSES",
    "Augment",
    "Batches",
    "DatasetInfo",
    "ImageTensors",
    "RestrictedUnpickler",
    "dataset_info",
    "generate_shapes",
    "list_datasets",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_folder",
    "load_idx_dataset",
    "load_mnist",
    "load_mnist5k",
    "load_restricted_pickle",
    "load_shapes",
    "make_generator",
    "random_crop",
    "random_flip",
    "read_idx",
    "register_dataset",
    "write_idx",
]
