"""Packaging for pinsage_tf: a TensorFlow 2 / Keras implementation of PinSage.

The pins below are the stack known to work together (see BUILD_NOTES.md for why
each one is pinned). Install for development with ``make setup`` (which runs
``pip install -e .[dev,beam]`` inside ``.venv``).
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # TF 2.20 with Keras 2 (tf-keras); ScaNN's TF ops are compiled for 2.20 only.
    "tensorflow==2.20.*",
    "tf-keras==2.20.*",
    "tensorflow-recommenders==0.7.7",
    "scann[tf]==1.4.2",
    "numpy>=2,<3",
    "absl-py>=2.1",
    "tensorflow-serving-api==2.20.*",
    "grpcio>=1.66",
]

EXTRAS_REQUIRE = {
    "beam": ["apache-beam==2.77.*"],
    "dev": ["pytest>=8", "pytest-xdist>=3.6", "pytest-timeout>=2.3", "ruff==0.17.6"],
}

setup(
    name="pinsage_tf",
    version="0.1.0",
    description="PinSage (Ying et al., KDD'18) in TensorFlow 2 / Keras: "
    "importance neighborhoods, training, inference, ScaNN retrieval, serving.",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["pinsage_tf*", "trainer*", "serving*", "data*"]),
    package_data={"trainer": ["configs/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "pinsage-prepare=data.prepare:run",
            "pinsage-train=trainer.train:run",
            "pinsage-infer=trainer.infer:run",
            "pinsage-evaluate=trainer.evaluate:cli",
            "pinsage-export=trainer.export:run",
            "pinsage-refresh=trainer.refresh:run",
            "pinsage-serve=serving.server:run",
        ],
    },
)
