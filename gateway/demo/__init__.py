"""The demo: a throwaway CA (``pki``) that publishes its CRL and answers OCSP (``ocsp``), a
local mosquitto and the gateway in front of it (``run``). Not used by the gateway itself."""
