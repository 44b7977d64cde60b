# mqttgw in a container (the image conf/kubernetes/mqttgw.yaml runs):
#   docker build -t mqttgw:latest .
FROM python:3.12-slim-bookworm
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home mqttgw
USER 10001:10001
EXPOSE 8883 9180
ENTRYPOINT []
CMD ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "mqttgw", "--config", "/etc/mqttgw/config/mqttgw.conf"]
