#!/bin/sh
# Make the fleet's TLS certificates with openssl: a private CA, the broker's certificate and,
# for mutual TLS, one client certificate per device. EC P-256 keys throughout.
#
#   make-certs.sh ca     DIR                       DIR/edge-ca.key, DIR/edge-ca.crt (10 years)
#   make-certs.sh broker DIR NAME [NAME...]        DIR/broker.key, DIR/broker.crt (2 years);
#                                                  NAMEs are the DNS names and IP addresses
#                                                  devices use to reach the broker
#   make-certs.sh client DIR DEVICE_ID             DIR/DEVICE_ID.key, DIR/DEVICE_ID.crt (2 years)
#
# Keep edge-ca.key offline (it signs every certificate); devices need only edge-ca.crt.
# Existing files are never overwritten.
set -eu

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

die() {
    echo "make-certs.sh: $*" >&2
    exit 1
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
command -v openssl >/dev/null 2>&1 || die "openssl is not installed (apt-get install openssl)"
mkdir -p "$dir"
umask 077

refuse_existing() {
    for f in "$@"; do
        [ ! -e "$f" ] || die "$f exists; remove it first if you really mean to replace it"
    done
}

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA in $dir.
sign() {
    name=$1
    subject=$2
    ext=$3
    [ -f "$dir/edge-ca.key" ] && [ -f "$dir/edge-ca.crt" ] || die "no CA in $dir: run '$0 ca $dir' first"
    refuse_existing "$dir/$name.key" "$dir/$name.crt"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    printf '%s\n' "$ext" >"$tmp/ext.cnf"
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key"
    openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$tmp/req.csr"
    openssl x509 -req -in "$tmp/req.csr" -CA "$dir/edge-ca.crt" -CAkey "$dir/edge-ca.key" \
        -CAcreateserial -CAserial "$tmp/ca.srl" -days 730 -sha256 \
        -extfile "$tmp/ext.cnf" -out "$dir/$name.crt" 2>/dev/null
    chmod 0644 "$dir/$name.crt"
    echo "wrote $dir/$name.key and $dir/$name.crt"
}

case $cmd in
ca)
    refuse_existing "$dir/edge-ca.key" "$dir/edge-ca.crt"
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/edge-ca.key"
    openssl req -x509 -new -key "$dir/edge-ca.key" -sha256 -days 3650 \
        -subj "/CN=edge-agent fleet CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$dir/edge-ca.crt"
    chmod 0644 "$dir/edge-ca.crt"
    echo "wrote $dir/edge-ca.key (keep it offline) and $dir/edge-ca.crt"
    ;;
broker)
    [ $# -ge 1 ] || usage
    san=""
    for n in "$@"; do
        case $n in
        *[!0-9.]* | "") case $n in *:*) entry="IP:$n" ;; *) entry="DNS:$n" ;; esac ;;
        *) entry="IP:$n" ;;
        esac
        san="${san:+$san,}$entry"
    done
    sign broker "/CN=$1" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"
    ;;
client)
    [ $# -eq 1 ] || usage
    case $1 in
    *[!A-Za-z0-9_.-]* | "") die "device id '$1' must be letters, digits, '_', '.', '-'" ;;
    esac
    sign "$1" "/CN=$1" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"
    ;;
*)
    usage
    ;;
esac
