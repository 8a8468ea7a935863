# A release pipeline as a parameterized Nomad batch job: deploy a version into a site's staging
# slot, then swap it into production. Register it once, dispatch it for every release:
#
#   nomad job run -var artifact_url=https://…/slotd_linux_amd64.tar.gz release.nomad.hcl
#   nomad job dispatch -meta site=web -meta version=v3 release
#
# Meta: site and version (required); var, the job variable that takes the version (default
# "version"); vars, further deploy variables as space-separated k=v; slot (default "staging") and
# target (default "production").
#
# It finds slotd through Consul: the passing instance of the slotd service tagged "leader" (see
# slotd.nomad.hcl), else any passing instance, which sends it on to the leader. When a step fails it exits non-zero with slotd's reason in its log, so the
# dispatched job shows failed in the Nomad UI. A failed release is not retried: slotd has already
# left production as it was. The key api_token of the Nomad variable nomad/jobs/release (optional)
# holds slotd's API token.

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

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

job "release" {
  type        = "batch"
  datacenters = var.datacenters

  parameterized {
    meta_required = ["site", "version"]
    meta_optional = ["var", "vars", "slot", "target"]
  }

  meta {
    var    = "version"
    vars   = ""
    slot   = "staging"
    target = "production"
  }

  group "release" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "release" {
      driver = var.driver

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
          command = "/bin/sh"
          args    = ["${NOMAD_TASK_DIR}/release.sh", "${NOMAD_TASK_DIR}/slotd"]
        }
      }

      dynamic "config" {
        for_each = var.driver == "docker" ? ["image"] : []
        content {
          image        = var.image
          entrypoint   = ["/bin/sh"]
          args         = ["${NOMAD_TASK_DIR}/release.sh", "slotd"]
          network_mode = "host"
        }
      }

      # A release runs once: a template that changes while it runs (the leader moves) must not
      # restart it halfway.
      template {
        destination = "secrets/slotd.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
          {{- $addr := "" }}
          {{- range service "slotd" }}{{ if not $addr }}{{ $addr = printf "http://%s:%d" .Address .Port }}{{ end }}{{ end }}
          {{- range service "leader.slotd" }}{{ $addr = printf "http://%s:%d" .Address .Port }}{{ end }}
          SLOTD_ADDR={{ $addr }}
          {{- range nomadVarList "nomad/jobs/release" }}{{ if eq .Path "nomad/jobs/release" }}
          {{- with nomadVar .Path }}{{ with .api_token.Value }}
          SLOTD_TOKEN={{ . }}
          {{- end }}{{ end }}{{ end }}{{ end }}
        EOT
      }

      template {
        destination = "local/release.sh"
        change_mode = "noop"
        data        = <<-EOT
          set -eu
          slotd="$1"
          if [ -z "$${SLOTD_ADDR:-}" ]; then
            echo "release: no slotd instance is passing in Consul (service slotd)" >&2
            exit 1
          fi
          set -- -var "$NOMAD_META_var=$NOMAD_META_version"
          for kv in $NOMAD_META_vars; do
            set -- "$@" -var "$kv"
          done
          echo "release: $NOMAD_META_site $NOMAD_META_version into $NOMAD_META_slot, then $NOMAD_META_target, through $SLOTD_ADDR"
          "$slotd" deploy "$NOMAD_META_site" "$NOMAD_META_slot" "$@"
          "$slotd" swap "$NOMAD_META_site" "$NOMAD_META_slot" "$NOMAD_META_target"
        EOT
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
