# The kuberelay image: /manager (the operator) and /relay (each relay pod), static
# binaries on an empty base, run as a non-root user. `make image` builds the same
# content as a tarball without a container engine (hack/image).
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/manager . \
 && go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/relay ./relay/cmd/relay \
 && mkdir -m 1777 /out/tmp

FROM scratch
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="kuberelay" \
      org.opencontainers.image.description="Kubernetes operator and SMTP relay: /manager runs the operator, /relay each relay pod" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.source="https://github.com/kuberelay/kuberelay" \
      org.opencontainers.image.licenses="Apache-2.0"
# The CA bundle verifies smarthosts (SES, SendGrid, ...) over TLS.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/manager /manager
COPY --from=build /out/relay /relay
COPY --from=build /out/tmp /tmp
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/manager"]
