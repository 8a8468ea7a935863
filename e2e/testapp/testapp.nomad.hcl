# The e2e test app as a Nomad job (HCL2, Nomad 1.6). slotd overwrites the job ID with the lane's
# ID and adds slot tags and settings; the variables are the knobs of e2e/testapp/main.go.

variable "binary" {
  type        = string
  description = "absolute path of the built test app"
}

variable "app_version" {
  type    = string
  default = "v1"
}

variable "count" {
  type    = number
  default = 2
}

variable "cpu" {
  type        = number
  default     = 50
  description = "MHz each instance asks of its node"
}

variable "memory" {
  type        = number
  default     = 32
  description = "MB each instance asks of its node"
}

variable "service" {
  type    = string
  default = "web"
}

variable "startup_delay" {
  type        = string
  default     = ""
  description = "Go duration to wait before listening"
}

variable "slow_first" {
  type        = string
  default     = "0"
  description = "how many first requests (other than /healthz) are slow"
}

variable "slow_delay" {
  type    = string
  default = "2s"
}

variable "fail_healthz" {
  type    = string
  default = "false"
}

variable "fail_healthz_file" {
  type        = string
  default     = ""
  description = "/healthz fails while this file exists"
}

variable "fail_path" {
  type        = string
  default     = ""
  description = "a path that answers 500"
}

variable "error_rate" {
  type        = string
  default     = ""
  description = "fraction of requests answered 500 (a slot's ERROR_RATE setting overrides it)"
}

variable "added_latency" {
  type        = string
  default     = ""
  description = "Go duration added to every answer but /healthz and /metrics"
}

variable "show_env" {
  type        = string
  default     = ""
  description = "comma list of env vars GET / reports"
}

job "web" {
  datacenters = ["*"]
  type        = "service"

  group "app" {
    count          = var.count
    shutdown_delay = "0s"

    network {
      port "http" {}
    }

    service {
      name     = var.service
      port     = "http"
      provider = "consul"
      tags     = ["app"]

      check {
        type     = "http"
        path     = "/healthz"
        interval = "1s"
        timeout  = "1s"
      }
    }

    update {
      max_parallel      = 1
      min_healthy_time  = "2s"
      healthy_deadline  = "1m"
      progress_deadline = "2m"
      health_check      = "checks"
      auto_revert       = false
    }

    # Tests want a broken version to fail its deployment quickly, not to be retried for minutes.
    restart {
      attempts = 1
      interval = "1m"
      delay    = "1s"
      mode     = "fail"
    }

    # One new placement (a new port) covers a port taken by a process outside Nomad.
    reschedule {
      attempts       = 1
      interval       = "1h"
      delay          = "5s" # Nomad's minimum
      delay_function = "constant"
      unlimited      = false
    }

    ephemeral_disk {
      size = 20 # MB, more than the logs may take
    }

    task "app" {
      driver         = "raw_exec"
      kill_timeout   = "5s"
      shutdown_delay = "0s"

      config {
        command = var.binary
      }

      env {
        APP_VERSION       = var.app_version
        STARTUP_DELAY     = var.startup_delay
        SLOW_FIRST        = var.slow_first
        SLOW_DELAY        = var.slow_delay
        FAIL_HEALTHZ      = var.fail_healthz
        FAIL_HEALTHZ_FILE = var.fail_healthz_file
        FAIL_PATH         = var.fail_path
        SHOW_ENV          = var.show_env
        ERROR_RATE        = var.error_rate
        ADDED_LATENCY     = var.added_latency
      }

      logs {
        max_files     = 2
        max_file_size = 5
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
