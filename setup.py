"""espnet-hdmole: HDMoLE (hierarchical, dynamically thresholded mixture of LoRA experts)
for LLM-based ASR, as an ESPnet extension.

ESPnet itself is not listed in install_requires: espnet==202511 pins setuptools<74, which
torch>=2.9 contradicts. tools/install.sh installs ESPnet without that pin, then this package
with --no-deps.
"""
from setuptools import find_packages, setup

setup(
    name="espnet_hdmole",
    version="0.1.0",
    description="HDMoLE mixture of LoRA experts for multi-accent LLM-based ASR on ESPnet",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["espnet_hdmole", "espnet_hdmole.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "transformers>=4.45",
        "sentencepiece",
        "kaldiio",
        "jiwer",
        "pyyaml",
        "loralib",
        # the features of stage 2 and of a packed system's transcribe (espnet_hdmole/asr/speech_features.py)
        "kaldi-native-fbank",
        "soundfile",
        "scipy",
        "numpy",
    ],
    # opencc: traditional -> simplified in the text normaliser (the recipe's --t2s; tools/install.sh installs it)
    extras_require={"test": ["pytest>=7"], "t2s": ["opencc"]},
    license="Apache-2.0",
)
