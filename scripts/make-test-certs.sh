#!/usr/bin/env bash
# Test PKI for the --tls tests (openssl only; nothing outside DIR is touched).
# Usage: scripts/make-test-certs.sh DIR
# Makes, in DIR (PEM, EC P-256 keys):
#   ca.pem                 the CA both ends trust
#   server.{pem,key}       CN and IP SAN 127.0.0.1 (also DNS:localhost)
#   client.{pem,key}       the same names (CRIU's server checks the client's
#                          certificate against its own --address)
#   wrongname.{pem,key}    valid, but named wrong.example only
#   expired.{pem,key}      valid in January 2020 only
#   revoked.{pem,key}      valid, but listed in crl.pem
#   crl.pem                the CA's CRL (revokes revoked.pem)
#   other-ca.pem, stranger.{pem,key}   another CA and a certificate from it
set -euo pipefail
dir=${1:?usage: make-test-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
rm -rf db && mkdir db && : > db/index.txt && echo 1000 > db/serial && echo 1000 > db/crlnumber

cat > ca.cnf <<'CNF'
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = ./db
database = $dir/index.txt
serial = $dir/serial
crlnumber = $dir/crlnumber
new_certs_dir = ./db
default_md = sha256
default_days = 30
default_crl_days = 30
policy = anything
copy_extensions = copy
unique_subject = no
[ anything ]
commonName = supplied
[ leaf ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
CNF

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
mkca() { # name
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 365 -subj "/CN=lazy-pages test $1" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
leaf() { # name cn san ca [extra openssl ca args]
    local name=$1 cn=$2 san=$3 ca=$4
    shift 4
    key "$name.key"
    openssl req -new -key "$name.key" -out "$name.csr" -subj "/CN=$cn" -addext "subjectAltName=$san" 2>/dev/null
    openssl ca -batch -config ca.cnf -extensions leaf -cert "$ca.pem" -keyfile "$ca.key" -in "$name.csr" -out "$name.pem" -notext "$@" 2>/dev/null
}

mkca ca
mkca other-ca
leaf server 127.0.0.1 'IP:127.0.0.1,DNS:localhost' ca
leaf client 127.0.0.1 'IP:127.0.0.1,DNS:localhost' ca
leaf wrongname wrong.example 'DNS:wrong.example' ca
leaf expired 127.0.0.1 'IP:127.0.0.1' ca -startdate 20200101000000Z -enddate 20200201000000Z
leaf revoked 127.0.0.1 'IP:127.0.0.1' ca
leaf stranger 127.0.0.1 'IP:127.0.0.1' other-ca
openssl ca -config ca.cnf -cert ca.pem -keyfile ca.key -revoke revoked.pem 2>/dev/null
openssl ca -config ca.cnf -cert ca.pem -keyfile ca.key -gencrl -out crl.pem 2>/dev/null
rm -f ./*.csr
