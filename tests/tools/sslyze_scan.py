"""Scan a TLS server with sslyze's Python API and check it against a Mozilla profile.

Runs in its own environment (sslyze pins a cryptography older than the one pyOpenSSL needs),
made by scripts/test.sh in .venv-sslyze; tests/integration/test_tls_profile.py calls it and
reads the JSON it prints: the checker's issues, the ROBOT result, whether an OCSP staple was
served, and the accepted suites and curves.

    python sslyze_scan.py HOST PORT PROFILE --ca CA.pem --cert CLIENT.pem --key CLIENT.key
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sslyze import (
    ClientAuthenticationCredentials,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    ServerScanResultIncomplete,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)
from sslyze.plugins.certificate_info.implementation import CertificateInfoExtraArgument
from sslyze.plugins.robot.implementation import RobotScanResult, RobotScanResultEnum
from sslyze.scanner.models import RobotScanAttempt, ScanCommandsExtraArguments


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("profile", choices=["intermediate", "modern"])
    parser.add_argument("--ca", required=True, help="trust store for the server certificate")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()

    location = ServerNetworkLocation(args.host, args.port, ip_address=args.host)
    network = ServerNetworkConfiguration(
        tls_server_name_indication="localhost",
        tls_client_auth_credentials=ClientAuthenticationCredentials(
            certificate_chain_path=Path(args.cert), key_path=Path(args.key)
        ),
    )
    # nassl's legacy OpenSSL cannot set up an SSL 2.0 client with a client certificate
    # ("invalid input, usage, or OpenSSL build configuration"): SSL 2.0 and 3.0 are probed
    # without one (a server that refuses them does so at the ClientHello, before it asks for
    # a certificate), everything else with it; the checker then reads the merged result.
    legacy = {ScanCommand.SSL_2_0_CIPHER_SUITES, ScanCommand.SSL_3_0_CIPHER_SUITES}
    requests = [
        ServerScanRequest(
            server_location=location,
            network_configuration=network,
            scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER - legacy,
            scan_commands_extra_arguments=ScanCommandsExtraArguments(
                certificate_info=CertificateInfoExtraArgument(custom_ca_file=Path(args.ca))
            ),
        ),
        ServerScanRequest(
            server_location=location,
            network_configuration=ServerNetworkConfiguration(
                tls_server_name_indication="localhost"
            ),
            scan_commands=legacy,
        ),
    ]
    scanner = Scanner()
    scanner.queue_scans(requests)
    results = list(scanner.get_results())
    result = next(r for r in results if r.uuid == requests[0].uuid)
    old = next(r for r in results if r.uuid == requests[1].uuid)
    if result.scan_result is not None and old.scan_result is not None:
        merged = dataclasses.replace(
            result.scan_result,
            **{c.value: getattr(old.scan_result, c.value) for c in legacy},
        )
        result = dataclasses.replace(result, scan_result=merged)
    out: dict[str, object] = {"scan_status": result.scan_status.name}
    if result.scan_status != ServerScanStatusEnum.COMPLETED:
        out["error"] = str(result.connectivity_error_trace)
        print(json.dumps(out))
        return 0
    attempts = result.scan_result
    assert attempts is not None
    errors = {}
    for command in SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER:
        attempt = getattr(attempts, command.value)
        if attempt.status.name != "COMPLETED":
            errors[command.value] = (
                f"{attempt.status.name}: {attempt.error_reason} {attempt.error_trace}"
            )
    out["command_errors"] = errors
    robot_attempt = attempts.robot
    if robot_attempt.result is not None:
        out["robot"] = robot_attempt.result.robot_result.name
    elif robot_attempt.status.name == "ERROR":
        # ROBOT's probes are handshakes with crafted RSA key exchanges and no client
        # certificate: a server that requires one (and offers RSA key exchange) ends them
        # before the oracle shows. Said so in the output; the rest of the profile is still
        # checked, with ROBOT's result marked unknown (the checker flags only a strong oracle).
        out["robot"] = f"NOT_PROBED: {robot_attempt.error_reason} {robot_attempt.error_trace}"
        del errors["robot"]
        unknown = RobotScanAttempt(
            status=ScanCommandAttemptStatusEnum.COMPLETED,
            error_reason=None,
            error_trace=None,
            result=RobotScanResult(robot_result=RobotScanResultEnum.UNKNOWN_INCONSISTENT_RESULTS),
        )
        result = dataclasses.replace(
            result, scan_result=dataclasses.replace(attempts, robot=unknown)
        )
    config = MozillaTlsConfiguration.get(TlsConfigurationEnum(args.profile))
    try:
        check_server_against_tls_configuration(result, config)
        out["issues"] = {}
    except ServerNotCompliantWithTlsConfiguration as e:
        out["issues"] = e.issues
    except ServerScanResultIncomplete as e:
        out["incomplete"] = str(e)
    suites = {}
    for field in ("tls_1_2_cipher_suites", "tls_1_3_cipher_suites"):
        r = getattr(attempts, field).result
        if r is not None:
            suites[field] = sorted(s.cipher_suite.name for s in r.accepted_cipher_suites)
    out["suites"] = suites
    if attempts.elliptic_curves.result is not None:
        curves = attempts.elliptic_curves.result.supported_curves or []
        out["curves"] = sorted(c.name for c in curves)
    info = attempts.certificate_info.result
    if info is not None:
        out["ocsp_staple"] = [
            d.ocsp_response.response_status.name if d.ocsp_response is not None else None
            for d in info.certificate_deployments
        ]
        out["ocsp_trusted"] = [d.ocsp_response_is_trusted for d in info.certificate_deployments]
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
