export SLUICE_ENDPOINT=https://127.0.0.1:24610,https://127.0.0.1:24611
export SLUICE_CA_CERT=/tmp/pC/tls/ca.crt
export SLUICE_TOKEN=$(cat /tmp/pC/admin1.token)
S=/tmp/bb45/sluice
ADM=$(cat /tmp/pC/admin1.token)
H1=https://127.0.0.1:24620
H2=https://127.0.0.1:24621
C="curl -s --cacert /tmp/pC/tls/ca.crt"
