# One image for every dimsebus service; the compose file picks the sub-command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY services ./services
# dimsebus/ links to the two folders above: they install as dimsebus.schemas and .services.
COPY dimsebus ./dimsebus
RUN pip install --no-cache-dir .
RUN useradd --create-home dimsebus \
    && mkdir -p /var/lib/dimsebus /etc/dimsebus \
    && chown dimsebus /var/lib/dimsebus
USER dimsebus
EXPOSE 11112 9100
ENTRYPOINT ["dimsebus"]
CMD ["--help"]
