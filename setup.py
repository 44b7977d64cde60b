from setuptools import find_packages, setup

setup(
    name="mqttgw",
    version="0.1.0",
    description="A TLS gateway for MQTT brokers: mutual TLS, CRL checking, OCSP stapling",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # find_packages() skips twisted/plugins (no __init__.py there, on purpose: one would
    # shadow Twisted's own package), so it is listed by hand.
    packages=find_packages(include=["gateway", "gateway.*"]) + ["twisted.plugins"],
    install_requires=[
        "twisted>=24.7",
        "pyOpenSSL>=25.0",
        "service_identity>=24.1",
        "treq>=24.9",
        "cryptography>=43",
        "attrs>=23.1",
        "prometheus_client>=0.20",
        "wsproto>=1.2",
    ],
    entry_points={"console_scripts": ["mqttgw = gateway.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet",
    ],
)
