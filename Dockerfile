# slotd as a container image, for deploy/slotd.nomad.hcl and deploy/release.nomad.hcl with
# -var driver=docker:  docker build -t slotd:0.3.0 .
# deploy/deploy_test.go runs this file's build step and checks its stages against go.mod.

FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/slotd ./cmd/slotd

# Alpine rather than scratch: the release job runs its script with /bin/sh.
FROM alpine:3.20
RUN apk add --no-cache ca-certificates
COPY --from=build /out/slotd /usr/local/bin/slotd
ENTRYPOINT ["/usr/local/bin/slotd"]
CMD ["agent", "-config", "/etc/slotd"]
