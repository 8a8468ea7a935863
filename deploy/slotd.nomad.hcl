# slotd as a Nomad service job. Run it with the binary from a release archive:
#
#   nomad var put nomad/jobs/slotd slots_hcl=@slots.hcl web=@web.nomad.hcl api_token=@api_token
#   nomad job run -var artifact_url=https://…/slotd_linux_amd64.tar.gz -var 'jobspecs=["web"]' slotd.nomad.hcl
#
# or with a Docker image built from this repository's Dockerfile (-var driver=docker -var image=…).
#
# What comes from where:
# - The Nomad variable nomad/jobs/slotd holds the declarations: key slots_hcl is a slots.hcl with
#   the sites (and kv_prefix, log_level); each name in var.jobspecs is a key holding the jobspec of
#   that name, written to local/config/jobs/<name>.nomad.hcl (declare it as
#   job = "jobs/<name>.nomad.hcl"). Key api_token is required: the bearer token the API
#   requires (the API listens on the node's address; without api_token the daemon refuses to
#   start, naming the empty secrets/api_token). Optional keys: consul_token, nomad_token (tokens
#   of the daemon). Changing slots_hcl or a jobspec
#   reloads the daemon (SIGHUP) without restarting it; a file with errors keeps the old ones.
# - This job owns the daemon's own settings (local/config/00-nomad.hcl): where it listens, where
#   it keeps its state, how it reaches Consul and Nomad. Leave http, consul, nomad and data_dir
#   out of slots_hcl.
# - Instances elect one leader through Consul (<kv_prefix>/leader); the others answer 503 with the
#   leader's address. The slotd service's tags say who leads: "leader" or "standby", kept current
#   by slotd (enable_tag_override). Its check fails while the daemon cannot reach Consul or Nomad.
#
# Tokens: a Consul token with key_prefix "<kv_prefix>/" write, service:read, node:read and
# session:write (and service:write on "slotd" for the tags); a Nomad token with submit-job,
# read-job and list-jobs in the lanes' namespace.

variable "driver" {
  type        = string
  default     = "exec"
  description = "exec or raw_exec run the binary of artifact_url; docker runs image"
}

variable "artifact_url" {
  type        = string
  default     = ""
  description = "a .tar.gz holding the slotd binary at its root (exec and raw_exec)"
}

variable "image" {
  type        = string
  default     = "ghcr.io/slotd/slotd:0.3.0"
  description = "an image built from this repository's Dockerfile (docker)"
}

variable "count" {
  type        = number
  default     = 2
  description = "instances; one leads, the others stand by"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "consul_address" {
  type        = string
  default     = "127.0.0.1:8500"
  description = "the Consul agent as the task reaches it"
}

variable "nomad_address" {
  type        = string
  default     = "http://127.0.0.1:4646"
  description = "the Nomad agent as the task reaches it"
}

variable "jobspecs" {
  type        = list(string)
  default     = []
  description = "keys of nomad/jobs/slotd that hold the sites' jobspecs"
}

job "slotd" {
  type        = "service"
  datacenters = var.datacenters

  update {
    max_parallel     = 1
    min_healthy_time = "5s"
    healthy_deadline = "2m"
  }

  group "slotd" {
    count = var.count

    network {
      port "http" {}
    }

    service {
      name                = "slotd"
      port                = "http"
      provider            = "consul"
      tags                = ["standby"]
      enable_tag_override = true # slotd sets "leader" or "standby" on its own instance

      check {
        type     = "http"
        path     = "/v1/health"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "slotd" {
      driver = var.driver
      # A stopping daemon hands its running operation to the next leader at a phase boundary:
      # it lets running phases finish for 20 s, then cancels them (the next leader takes them
      # over from the journal), releases the leader lock and stops its API, in at most 30 s
      # (agent.StopTime). Nomad clients cut kill_timeout down to their max_kill_timeout, 30 s
      # unless their client block raises it; so this fits a default client.
      kill_timeout = "30s"

      dynamic "artifact" {
        for_each = var.driver == "docker" ? [] : [var.artifact_url]
        content {
          source      = artifact.value
          destination = "local/"
        }
      }

      dynamic "config" {
        for_each = var.driver == "docker" ? [] : ["binary"]
        content {
          command = "local/slotd"
          args    = ["agent", "-config", "${NOMAD_TASK_DIR}/config"]
        }
      }

      dynamic "config" {
        for_each = var.driver == "docker" ? ["image"] : []
        content {
          image        = var.image
          args         = ["agent", "-config", "${NOMAD_TASK_DIR}/config"]
          network_mode = "host" # Consul and Nomad on the node's loopback, as for exec
        }
      }

      template {
        destination = "local/config/00-nomad.hcl"
        data        = <<-EOT
          # Written by the slotd job: the daemon's own settings.
          data_dir = "{{ env "NOMAD_ALLOC_DIR" }}/data"
          http {
            address    = "{{ env "NOMAD_ADDR_http" }}"
            token_file = "{{ env "NOMAD_SECRETS_DIR" }}/api_token"
          }
          consul {
            address = "${var.consul_address}"
            service = "slotd"
          }
          nomad {
            address = "${var.nomad_address}"
          }
        EOT
      }

      template {
        destination = "secrets/api_token"
        perms       = "0600"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/slotd" }}{{ with .api_token }}{{ .Value }}{{ end }}{{ end -}}
        EOT
      }

      template {
        destination = "secrets/tokens.env"
        env         = true
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/slotd" }}
          {{- with .consul_token.Value }}CONSUL_HTTP_TOKEN={{ . }}{{ end }}
          {{ with .nomad_token.Value }}NOMAD_TOKEN={{ . }}{{ end }}
          {{- end }}
        EOT
      }

      template {
        destination   = "local/config/slots.hcl"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          {{- with nomadVar "nomad/jobs/slotd" }}{{ .slots_hcl.Value }}{{ end -}}
        EOT
      }

      dynamic "template" {
        for_each = var.jobspecs
        content {
          destination   = "local/config/jobs/${template.value}.nomad.hcl"
          change_mode   = "signal"
          change_signal = "SIGHUP"
          data          = "{{ with nomadVar \"nomad/jobs/slotd\" }}{{ with index . \"${template.value}\" }}{{ .Value }}{{ end }}{{ end }}"
        }
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
