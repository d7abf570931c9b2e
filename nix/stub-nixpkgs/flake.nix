# A minimal stand-in for nixpkgs, used only to evaluate moat's flake where the real
# nixpkgs can't be fetched. It provides the attributes the flake uses, checks the
# arguments a real nixpkgs would need, and yields derivations that are instantiated
# but never built. A misspelt attribute or a broken expression in flake.nix fails here.
{
  outputs =
    { self }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
      lib = {
        inherit genAttrs;
        licenses.mit = { spdxId = "MIT"; };
        platforms = {
          linux = [ "x86_64-linux" "aarch64-linux" ];
          darwin = [ "x86_64-darwin" "aarch64-darwin" ];
        };
      };
      pkgsFor =
        system:
        let
          mkDrv =
            attrs:
            let
              name = attrs.name or "${attrs.pname}-${attrs.version}";
              drv = derivation {
                inherit name system;
                builder = "/bin/sh";
                args = [ "-c" "echo stand-in nixpkgs cannot build; exit 1" ];
              };
            in
            drv
            // {
              meta = attrs.meta or { };
              passthru = attrs.passthru or { };
              overrideAttrs = f: mkDrv (attrs // f attrs);
            }
            // builtins.removeAttrs attrs [ "meta" "name" "system" "builder" "args" ];
          tool = name: mkDrv { inherit name; };
          require = cond: msg: if cond then true else throw "stand-in nixpkgs: ${msg}";
        in
        {
          inherit lib;
          stdenv.hostPlatform.system = system;
          installShellFiles = tool "install-shell-files";
          rustPlatform.buildRustPackage =
            attrs:
            assert require (attrs ? pname && builtins.isString attrs.version) "buildRustPackage needs pname and version";
            assert require (attrs ? src) "buildRustPackage needs src";
            assert require (attrs ? cargoLock.lockFile) "buildRustPackage needs cargoLock.lockFile";
            assert require (builtins.pathExists attrs.cargoLock.lockFile) "cargoLock.lockFile does not exist";
            assert require (!(attrs ? cargoHash || attrs ? cargoSha256)) "use cargoLock, not a vendor hash";
            assert require (builtins.isList (attrs.nativeBuildInputs or [ ])) "nativeBuildInputs must be a list";
            assert require (builtins.isString (attrs.meta.mainProgram or "")) "meta.mainProgram must be a string";
            mkDrv attrs;
          runCommand =
            name: env: script:
            assert require (builtins.isString script) "runCommand script must be a string";
            mkDrv (env // { inherit name; buildCommand = script; });
          mkShell =
            attrs:
            assert require (builtins.all (d: d ? drvPath) (attrs.inputsFrom or [ ])) "mkShell inputsFrom must be derivations";
            assert require (builtins.all (d: d ? drvPath) (attrs.packages or [ ])) "mkShell packages must be derivations";
            mkDrv (attrs // { name = "moat-shell"; });
        }
        // genAttrs [
          "cargo"
          "cargo-nextest"
          "clippy"
          "rustfmt"
          "mandoc"
          "curl"
          "git"
          "openssh"
          "gh"
          "nixfmt-rfc-style"
        ] tool;
    in
    {
      inherit lib;
      legacyPackages = genAttrs systems pkgsFor;
    };
}
