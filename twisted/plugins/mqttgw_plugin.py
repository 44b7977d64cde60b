from twisted.application.service import ServiceMaker

mqttgw = ServiceMaker(
    "mqttgw", "gateway.tap", "TLS gateway for MQTT brokers (mutual TLS, CRL, OCSP)", "mqttgw"
)
