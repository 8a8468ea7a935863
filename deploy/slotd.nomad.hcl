# slotd as a Nomad job next to a real cluster. One instance is enough: more instances elect a
# leader through Consul (slotd/leader) and the others answer 503 with the leader's address.
# The declarations come from a Nomad variable at nomad/jobs/slotd (key "slots_hcl"); the
# jobspecs they name go next to them in the task's local/ folder (see the template blocks).

variable "image" {
  type    = string
  default = "ghcr.io/example/slotd:0.1.0" # build from this repo: go build ./cmd/slotd
}

job "slotd" {
  type = "service"

  group "slotd" {
    count = 1

    network {
      port "http" { static = 4680 }
    }

    service {
      name     = "slotd"
      port     = "http"
      provider = "consul"
      check {
        type     = "http"
        path     = "/v1/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "slotd" {
      driver = "docker"

      config {
        image = var.image
        args  = ["agent", "-config", "${NOMAD_TASK_DIR}/slots.hcl"]
        ports = ["http"]
      }

      # Tokens: a Consul token with key_prefix "slotd/" write, service:read and session:write;
      # a Nomad token with submit-job, read-job and list-jobs in the lanes' namespace.
      template {
        destination = "secrets/tokens.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/slotd" }}
          CONSUL_HTTP_TOKEN={{ .consul_token }}
          NOMAD_TOKEN={{ .nomad_token }}
          {{ end }}
        EOT
      }

      template {
        destination = "local/slots.hcl"
        change_mode = "signal"
        change_signal = "SIGHUP" # slotd reloads its declarations; a bad file keeps the old ones
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/slotd" }}{{ .slots_hcl }}{{ end }}
        EOT
      }

      # The declarations should set http { address = "0.0.0.0:4680" } and point consul and
      # nomad at the node's agents (e.g. "${attr.unique.network.ip-address}:8500").

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
